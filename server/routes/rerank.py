"""`POST /v1/rerank`: documents ranked by relevance to a query (the Cohere / Jina shape, or
Voyage's). Also at `/v2/rerank`, where Cohere's v2 client posts, and `/rerank` (as vLLM serves
it); the same body and answer on each.

Three kinds of model rank:
- a chat model judges each document "yes" or "no" (server/judging.py: the Qwen3-Reranker
  recipe through the chat engine's batch); `relevance_score` is P(yes) / (P(yes) + P(no)).
  A real reranker when the model is one (Qwen3-Reranker); small general chat models are weak
  judges;
- a cross-encoder (BERT or XLM-R sequence classification: a real reranker) reads each
  (query, document) pair together; `relevance_score` is the sigmoid of its logit (or, for two
  labels, the probability of the second);
- a bi-encoder (an embedding model such as all-MiniLM-L6-v2) embeds the query and the documents
  apart; `relevance_score` is their cosine similarity, in [-1, 1]. Weaker than a cross-encoder,
  but what semantic search with that model gives.

Documents longer than the model takes are cut to fit (rerankers read the start of a document),
unless Voyage's `truncation` is false: then, as Voyage's API does, such a document is a 400
naming it and its token count against the limit. An over-long query is refused (for a
cross-encoder, one that leaves no room for a document).
Results are sorted by score, best first, `top_n` of them.
A body in Voyage's words (`top_k`) gets Voyage's answer (`data`, documents as strings).

Errors are OpenAI's shape, except to Cohere's clients (on `/v2/rerank`, or from a Cohere SDK on
any path: server.errors.error_wire), which read Cohere's `{"message": ...}`; the engine's own
failures, which this route answers itself, take the same shape as the handlers'.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from engines.errors import ModelNotFound
from engines.kinds import CHAT, EMBEDDING, ChatEngine, EmbeddingEngine
from engines.pool import EnginePool
from engines.types import EmbeddingModelInfo, EmbeddingRequest
from server import judging, logs
from server.body import read_json_object, validate
from server.deps import PoolDep, SettingsDep
from server.errors import APIError, error_wire, wire_body
from server.generation import EventSource
from server.routes.embeddings import run, token_inputs
from server.schemas.common import documented_body, response_headers
from server.schemas.embeddings import IGNORED_RERANK_FIELDS, RerankRequest
from server.serving import collected_or_gone, error_response

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/rerank", openapi_extra=documented_body(RerankRequest))
@router.post("/v2/rerank", include_in_schema=False)
@router.post("/rerank", include_in_schema=False)
async def rerank(request: Request, settings: SettingsDep, pool: PoolDep) -> Response:
    raw = await read_json_object(request, settings.max_body_bytes)
    body = validate(RerankRequest, raw)
    if _kind(pool, body.model) == CHAT.name:
        return await _judged(request, raw, body, await pool.acquire(body.model, CHAT))
    engine = await pool.acquire(body.model, EMBEDDING)
    info = engine.info
    assert info is not None
    documents = body.texts()
    if info.task == "score":
        await _check_pair_room(engine, info, body.query)
        if not body.cut():
            await _check_pairs_fit(engine, info, body.query, documents)
    else:
        query = await token_inputs(
            engine, info, [body.query], cut=False, param="query", indexed=False, cut_by=None
        )
        inputs = query + await token_inputs(
            engine, info, documents, body.cut(), param="documents", cut_by='"truncation": true'
        )
    request_id = f"rerank-{uuid.uuid4().hex}"
    logs.request_id.set(request_id)
    headers = response_headers(request_id, raw, RerankRequest, IGNORED_RERANK_FIELDS)
    logger.info("%s rerank model=%r documents=%d", request_id, body.model, len(documents))
    if info.task == "score":
        pairs = await asyncio.to_thread(
            engine.tokenize_pairs, body.query, documents, info.max_tokens
        )
        work = EmbeddingRequest(request_id, [ids for ids, _ in pairs], [t for _, t in pairs])
    else:
        work = EmbeddingRequest(request_id, inputs)
    outcome = await run(request, engine, work, _shape(request))
    if isinstance(outcome, Response):
        return outcome
    scores = relevance(info, outcome.vectors)
    response = _ranked(request_id, body, [float(s) for s in scores], outcome.prompt_tokens)
    return JSONResponse(response, headers=headers)


async def _judged(
    request: Request, raw: dict[str, Any], body: RerankRequest, engine: ChatEngine
) -> Response:
    """Rerank with a chat model: every document judged yes/no on the chat engine."""
    answers = judging.answer_tokens(engine, body.model)
    documents = body.texts()
    prompts = await asyncio.to_thread(
        lambda: [
            judging.judging_prompt(engine, body.query, d, cut=body.cut(), name=f"documents[{i}]")
            for i, d in enumerate(documents)
        ]
    )
    request_id = f"rerank-{uuid.uuid4().hex}"
    logs.request_id.set(request_id)
    headers = response_headers(request_id, raw, RerankRequest, IGNORED_RERANK_FIELDS)
    logger.info("%s rerank (judged) model=%r documents=%d", request_id, body.model, len(prompts))
    streams: list[EventSource] = []
    work = judging.judge(engine, request_id, prompts, answers, streams)
    scores = await collected_or_gone(request, work, streams, request_id)
    if isinstance(scores, Response):
        return scores
    if isinstance(scores, Exception):
        return error_response(scores, headers, _shape(request))
    tokens = sum(len(prompt) for prompt in prompts)
    return JSONResponse(_ranked(request_id, body, scores, tokens), headers=headers)


async def _check_pair_room(engine: EmbeddingEngine, info: EmbeddingModelInfo, query: str) -> None:
    """A cross-encoder reads the query and a document together in `max_tokens`: a query that
    fits alone may still leave no room for the document (which would be cut to nothing, every
    one scored on the query alone) or even for the pair's own separators."""
    [tokens] = await asyncio.to_thread(engine.tokenize, [query])
    most = info.max_tokens - info.pair_specials - 1
    if len(tokens) > most:
        raise APIError(
            400,
            f"query is {len(tokens)} tokens long; '{info.name}' reads it together with each "
            f"document in {info.max_tokens} tokens, so it takes a query of at most {most}",
            param="query",
            code="context_length_exceeded",
        )


async def _check_pairs_fit(
    engine: EmbeddingEngine, info: EmbeddingModelInfo, query: str, documents: list[str]
) -> None:
    """Unless cut (Voyage's `truncation: false`), each document must fit beside the query in
    the pair the cross-encoder reads; the first that does not is named."""
    query_tokens, *document_tokens = await asyncio.to_thread(engine.tokenize, [query, *documents])
    for index, tokens in enumerate(document_tokens):
        length = len(query_tokens) + len(tokens) + info.pair_specials
        if length > info.max_tokens:
            raise APIError(
                400,
                f"documents[{index}] is {len(tokens)} tokens long, {length} with the query and "
                f"separators; '{info.name}' reads a query and a document together in at most "
                f'{info.max_tokens} (send "truncation": true to cut documents to fit)',
                param="documents",
                code="context_length_exceeded",
            )


def _shape(request: Request) -> Callable[[APIError], dict[str, Any]]:
    """How this request's engine errors are written: in its wire's shape (Cohere's or
    OpenAI's)."""
    return functools.partial(wire_body, wire=error_wire(request.scope))


def _kind(pool: EnginePool, model: str) -> str:
    """The configured kind of `model`: for a name not configured, the default model's (rerank
    takes either kind, so the default serves it whatever its kind); 404 without a default."""
    try:
        name = pool.resolve(model)
    except ModelNotFound:
        if pool.default_model is None:
            raise
        name = pool.default_model
    return next(entry.kind for entry in pool.models() if entry.name == name)


def _ranked(
    request_id: str, body: RerankRequest, scores: list[float], prompt_tokens: int
) -> dict[str, Any]:
    """The response: the best `top_n` documents, best first (ties in input order); in Voyage's
    shape for Voyage's body (its client reads `data` and `usage.total_tokens`)."""
    documents = body.texts()
    order = sorted(range(len(documents)), key=lambda i: -scores[i])[: body.count()]
    voyage = body.voyage()
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if body.return_documents:
            result["document"] = documents[index] if voyage else {"text": documents[index]}
        results.append(result)
    if voyage:
        usage = {"total_tokens": prompt_tokens}
        return {"object": "list", "data": results, "model": body.model, "usage": usage}
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"id": request_id, "model": body.model, "results": results, "usage": usage}


def relevance(info: EmbeddingModelInfo, vectors: np.ndarray) -> np.ndarray:
    """One score per document: a cross-encoder's probability of relevance, or the cosine of
    the query's embedding (row 0) with each document's."""
    if info.task == "score":
        logits = vectors.astype(np.float64)
        if logits.shape[1] == 1:
            return 1 / (1 + np.exp(-logits[:, 0]))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted[:, -1] / shifted.sum(axis=1)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return unit[1:] @ unit[0]
