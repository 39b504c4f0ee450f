"""`POST /v1/rerank`: documents ranked by relevance to a query (the Cohere / Jina shape).

Two kinds of embedding-kind model rank:
- a cross-encoder (BERT or XLM-R sequence classification: a real reranker) reads each
  (query, document) pair together; `relevance_score` is the sigmoid of its logit (or, for two
  labels, the probability of the second);
- a bi-encoder (an embedding model such as all-MiniLM-L6-v2) embeds the query and the documents
  apart; `relevance_score` is their cosine similarity, in [-1, 1]. Weaker than a cross-encoder,
  but what semantic search with that model gives.

Documents longer than the model takes are cut to fit (rerankers read the start of a document);
an over-long query is refused. Results are sorted by score, best first, `top_n` of them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from engines.kinds import EMBEDDING
from engines.types import EmbeddingModelInfo, EmbeddingRequest
from server import logs
from server.body import read_json_object, validate
from server.deps import PoolDep, SettingsDep
from server.routes.embeddings import run, token_inputs
from server.schemas.common import documented_body, response_headers
from server.schemas.embeddings import IGNORED_RERANK_FIELDS, RerankRequest

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/rerank", openapi_extra=documented_body(RerankRequest))
async def rerank(request: Request, settings: SettingsDep, pool: PoolDep) -> Response:
    raw = await read_json_object(request, settings.max_body_bytes)
    body = validate(RerankRequest, raw)
    engine = await pool.acquire(body.model, EMBEDDING)
    info = engine.info
    assert info is not None
    documents = body.texts()
    await token_inputs(engine, info, [body.query], cut=False, param="query")  # fits whole
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
        inputs = await token_inputs(engine, info, [body.query, *documents], cut=True)
        work = EmbeddingRequest(request_id, inputs)
    outcome = await run(request, engine, work)
    if isinstance(outcome, Response):
        return outcome
    scores = relevance(info, outcome.vectors)
    order = sorted(range(len(documents)), key=lambda i: -scores[i])[: body.top_n]
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": float(scores[index])}
        if body.return_documents:
            result["document"] = {"text": documents[index]}
        results.append(result)
    usage = {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens}
    response = {"id": request_id, "model": body.model, "results": results, "usage": usage}
    return JSONResponse(response, headers=headers)


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
