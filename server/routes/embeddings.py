"""`POST /v1/embeddings` (spec `CreateEmbeddingResponse`).

Everything is checked before the engine sees the request — body, model and its kind, each
input's length (400 naming the input unless `truncate`, or Voyage's `truncation`, is true: both
default to refusing here, as OpenAI does), token ids within the vocabulary,
`dimensions` (Voyage's client names these `truncation` and `output_dimension`, and asks for
`output_dtype`: only float is served) — and texts are tokenized with the model's Rust tokenizer
in a worker thread (no MLX there). Vectors come back as float lists or, with
`encoding_format: "base64"`, as the base64 of little-endian float32 bytes (what the OpenAI SDKs
ask for by default).

`dimensions` below the model's own keeps the first components and renormalises them — only
for Matryoshka-trained models, whose prefixes are embeddings themselves; other models answer 400.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from engines.kinds import EMBEDDING, EmbeddingEngine
from engines.types import EmbeddingModelInfo, EmbeddingRequest, EmbeddingsDone, ErrorEvent
from server import logs
from server.body import read_json_object, validate
from server.deps import PoolDep, SettingsDep
from server.errors import APIError
from server.generation import EventSource
from server.schemas.common import documented_body, response_headers
from server.schemas.embeddings import IGNORED_EMBEDDING_FIELDS, EmbeddingsRequest
from server.serving import collected_or_gone, error_response

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/embeddings", openapi_extra=documented_body(EmbeddingsRequest))
async def create_embeddings(request: Request, settings: SettingsDep, pool: PoolDep) -> Response:
    raw = await read_json_object(request, settings.max_body_bytes)
    body = validate(EmbeddingsRequest, raw)
    engine = await pool.acquire(body.model, EMBEDDING)
    info = embedder_info(engine, body.model)
    dimensions, named = body.shortened()
    check_dimensions(info, dimensions, named)
    inputs = await token_inputs(engine, info, body.items(), body.cut(), cut_by=body.cut_by())
    request_id = f"embd-{uuid.uuid4().hex}"
    logs.request_id.set(request_id)
    headers = response_headers(request_id, raw, EmbeddingsRequest, IGNORED_EMBEDDING_FIELDS)
    logger.info("%s embeddings model=%r inputs=%d", request_id, body.model, len(inputs))
    outcome = await run(request, engine, EmbeddingRequest(request_id, inputs))
    if isinstance(outcome, Response):
        return outcome
    vectors = shorten(outcome.vectors, dimensions, info.normalized)
    data = [
        {"object": "embedding", "index": index, "embedding": encode(vector, body.encoding_format)}
        for index, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens}
    response = {"object": "list", "data": data, "model": body.model, "usage": usage}
    return JSONResponse(response, headers=headers)


def embedder_info(engine: EmbeddingEngine, model: str) -> EmbeddingModelInfo:
    info = engine.info
    assert info is not None
    if info.task != "embed":
        raise APIError(
            400,
            f"'{model}' is a reranker (cross-encoder): it scores query–document pairs on "
            "/v1/rerank and makes no embeddings",
            param="model",
            code="wrong_model_kind",
        )
    return info


def check_dimensions(
    info: EmbeddingModelInfo, dimensions: int | None, param: str = "dimensions"
) -> None:
    if dimensions is None or dimensions == info.dimensions:
        return
    if dimensions > info.dimensions:
        message = f"'{info.name}' makes {info.dimensions} dimensions; asked {dimensions}"
    elif not info.matryoshka:
        message = (
            f"'{info.name}' is not Matryoshka-trained: its embeddings cannot be shortened "
            f"(it makes {info.dimensions} dimensions)"
        )
    else:
        return
    raise APIError(400, message, param=param, code="invalid_value")


async def token_inputs(
    engine: EmbeddingEngine,
    info: EmbeddingModelInfo,
    items: Sequence[str | list[int]],
    cut: bool,
    param: str = "input",
    *,
    indexed: bool = True,
    cut_by: str | None = '"truncate": true',
    keep_end: bool = False,
) -> list[list[int]]:
    """Each input's token ids with the model's special tokens; over-long ones cut to their start
    (`cut`; to their end with `keep_end`, Cohere's `truncate: START`) or refused, naming the
    first (`param[i]`, or `param` alone when not `indexed`) and what to send to have it cut
    (`cut_by`, e.g. `"truncate": true`; None: nothing can, as for a rerank query)."""
    texts = [item for item in items if isinstance(item, str)]
    encoded = iter(await asyncio.to_thread(engine.tokenize, texts) if texts else [])
    room = info.max_tokens - len(info.special_prefix) - len(info.special_suffix)
    inputs = []
    for index, item in enumerate(items):
        name = f"{param}[{index}]" if indexed else param
        tokens = next(encoded) if isinstance(item, str) else item
        if not isinstance(item, str) and max(item) >= info.vocab_size:
            raise APIError(
                400,
                f"{name} holds token id {max(item)}, outside the vocabulary of "
                f"'{info.name}' ({info.vocab_size} tokens). Token ids are the model's own; "
                "tiktoken ids (LangChain's OpenAIEmbeddings sends them unless "
                "check_embedding_ctx_length=False) are not: send the texts",
                param="input",
                code="invalid_value",
            )
        if len(tokens) > room and not cut:
            hint = f" (send {cut_by} to cut {param} to that length)" if cut_by else ""
            raise APIError(
                400,
                f"{name} is {len(tokens) + info.max_tokens - room} tokens long; "
                f"'{info.name}' takes at most {info.max_tokens}{hint}",
                param=param,
                code="context_length_exceeded",
            )
        kept = tokens[max(0, len(tokens) - room) :] if keep_end else tokens[:room]
        inputs.append([*info.special_prefix, *kept, *info.special_suffix])
    return inputs


async def run(
    request: Request,
    engine: EmbeddingEngine,
    work: EmbeddingRequest,
    shape: Callable[[APIError], dict[str, object]] = APIError.body,
) -> EmbeddingsDone | Response:
    """The engine's result; a 499 when the client left first, an error body (in `shape`) if it
    failed."""
    stream = engine.submit(work)
    outcome = await collected_or_gone(request, _result(stream), [stream], work.request_id)
    if isinstance(outcome, Exception):
        return error_response(outcome, {}, shape)
    return outcome


async def _result(stream: EventSource) -> EmbeddingsDone | Exception:
    async for event in stream:
        if isinstance(event, EmbeddingsDone):
            return event
        if isinstance(event, ErrorEvent):
            return event.error
    return RuntimeError("the embedding stream ended early")


def shorten(vectors: np.ndarray, dimensions: int | None, normalized: bool) -> np.ndarray:
    """The first `dimensions` components, renormalised when the model's vectors are unit."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    short = vectors[:, :dimensions]
    if not normalized:
        return short
    norms = np.linalg.norm(short, axis=1, keepdims=True)
    return (short / np.maximum(norms, 1e-12)).astype(np.float32)


def encode(vector: np.ndarray, encoding_format: str) -> Any:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()
