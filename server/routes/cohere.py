"""Cohere's embed API on an embedding model: `POST /v2/embed` (the `cohere` client's
`ClientV2.embed`) and `POST /v1/embed` (its v1 `Client.embed`); OpenAI has no /v1/embed, so
nothing else answers there. The body is server/schemas/cohere.py's; the vectors are the ones
/v1/embeddings gives for the same texts (the same checks, tokenizer and engine).

Answer: `{"id", "embeddings": {type: [...] for each of embedding_types}, "texts", "meta":
{"api_version": {"version"}, "billed_units": {"input_tokens"}}, "response_type":
"embeddings_by_type"}` — except on v1 without `embedding_types`, which is Cohere's
`"embeddings_floats"` answer, `embeddings` a list of float lists. `binary`/`ubinary` are the
signs (> 0 → 1) packed eight to a byte, first dimension in the high bit, as sentence-transformers'
quantisation (Cohere's) packs them; `binary` is the byte less 128. `base64` is the little-endian
float32 bytes of each vector.

Errors are Cohere's `{"message": ...}` with the status, on every path (server/errors.py picks the
shape by path): the client raises its BadRequestError, NotFoundError... carrying that body.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from engines.kinds import EMBEDDING
from engines.types import EmbeddingRequest
from server import logs
from server.body import read_json_object, validate
from server.deps import PoolDep, SettingsDep
from server.errors import APIError
from server.routes.embeddings import (
    check_dimensions,
    embedder_info,
    encode,
    run,
    shorten,
    token_inputs,
)
from server.schemas.cohere import IGNORED_COHERE_FIELDS, CohereEmbedRequest
from server.schemas.common import response_headers

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v2/embed", include_in_schema=False)
async def embed_v2(request: Request, settings: SettingsDep, pool: PoolDep) -> Response:
    return await _embed(request, settings, pool, version=2)


@router.post("/v1/embed", include_in_schema=False)
async def embed_v1(request: Request, settings: SettingsDep, pool: PoolDep) -> Response:
    return await _embed(request, settings, pool, version=1)


async def _embed(request: Request, settings: SettingsDep, pool: PoolDep, version: int) -> Response:
    raw = await read_json_object(request, settings.max_body_bytes)
    body = validate(CohereEmbedRequest, raw)
    engine = await pool.acquire(body.model, EMBEDDING)
    info = embedder_info(engine, body.model)
    check_dimensions(info, body.output_dimension, "output_dimension")
    inputs = await token_inputs(
        engine,
        info,
        body.texts,
        body.truncate != "NONE",
        param="texts",
        cut_by='"truncate": "END" (or "START")',
        keep_end=body.truncate == "START",
    )
    request_id = f"embed-{uuid.uuid4().hex}"
    logs.request_id.set(request_id)
    headers = response_headers(request_id, raw, CohereEmbedRequest, IGNORED_COHERE_FIELDS)
    logger.info(
        "%s embed (Cohere v%d) model=%r texts=%d", request_id, version, body.model, len(inputs)
    )
    outcome = await run(request, engine, EmbeddingRequest(request_id, inputs), _error)
    if isinstance(outcome, Response):
        return outcome
    vectors = shorten(outcome.vectors, body.output_dimension, info.normalized)
    answer: dict[str, Any] = {"id": request_id}
    if version == 1 and body.embedding_types is None:
        answer["response_type"] = "embeddings_floats"
        answer["embeddings"] = vectors.astype(np.float32).tolist()
    else:
        answer["response_type"] = "embeddings_by_type"
        kinds = dict.fromkeys(body.embedding_types or ["float"])  # once each, in order
        answer["embeddings"] = {kind: typed(vectors, kind) for kind in kinds}
    answer["texts"] = body.texts
    answer["meta"] = {
        "api_version": {"version": str(version)},
        "billed_units": {"input_tokens": outcome.prompt_tokens},
    }
    return JSONResponse(answer, headers=headers)


def typed(vectors: np.ndarray, kind: str) -> list[Any]:
    """The vectors as Cohere's embedding type `kind` (one of SERVED_TYPES)."""
    if kind == "float":
        return vectors.astype(np.float32).tolist()
    if kind == "base64":
        return [encode(vector, "base64") for vector in vectors]
    packed = np.packbits(vectors > 0, axis=1)  # (n, ceil(dimensions / 8)) uint8
    return packed.tolist() if kind == "ubinary" else (packed.astype(np.int16) - 128).tolist()


def _error(error: APIError) -> dict[str, object]:
    return {"message": error.message}
