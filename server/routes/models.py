"""`GET /v1/models` and `GET /v1/models/{id}` (spec `ListModelsResponse`, `Model`), with a
`loaded` extension field; and the admin routes `POST /v1/models/{id}/load` and `/unload`
(behind the API key when one is set, like every /v1 route).

Every configured model is listed, loaded or not (a request for one loads it); ids are the
configured names, and aliases resolve to them. A loaded chat model shows `context_window`, the
context it serves (a models-file `context_length` cap included): what agent clients size their
history by.

Asked with an `anthropic-version` header (Anthropic's SDK and clients), the two GET routes answer
in Anthropic's shape (`ModelInfo`, a page with `first_id`/`last_id`/`has_more`), chat models only,
`max_input_tokens` being the context window. The list honours Anthropic's `limit` (1–1000,
default 20), `after_id` and `before_id`, so the SDK's auto-pagination walks every model once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from engines.pool import EnginePool, PoolModel
from server.deps import PoolDep
from server.errors import APIError

router = APIRouter()


def _model_object(model: PoolModel) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": "mlxd",
        "loaded": model.loaded,
        "kind": model.kind,
        **({"status": model.status} if model.status else {}),  # "downloading 42%"
        **({"context_window": model.context_length} if model.context_length else {}),
    }


def _anthropic_model(model: PoolModel) -> dict[str, Any]:
    """Anthropic's `ModelInfo`."""
    return {
        "type": "model",
        "id": model.name,
        "display_name": model.name,
        "created_at": datetime.fromtimestamp(model.created, UTC).isoformat().replace("+00:00", "Z"),
        "lifecycle": "active",
        **({"max_input_tokens": model.context_length} if model.context_length else {}),
    }


def _anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


def _anthropic_page(models: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """One page of Anthropic's model list: `limit` models after `after_id`, or the `limit`
    before `before_id`; `has_more` says whether models lie beyond the page in that direction."""
    query = request.query_params
    limit = query.get("limit", "20")
    # ASCII digits only: str.isdigit also takes '²', which int() refuses.
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 1000:
        raise APIError(400, "limit: must be an integer from 1 to 1000", param="limit")
    ids = [model["id"] for model in models]
    after, before = query.get("after_id"), query.get("before_id")
    for name, cursor in (("after_id", after), ("before_id", before)):
        if cursor is not None and cursor not in ids:
            raise APIError(400, f"{name}: no model '{cursor}' in the list", param=name)
    if before is not None:
        end = ids.index(before)
        start = max(0, end - int(limit))
        page, has_more = models[start:end], start > 0
    else:
        start = ids.index(after) + 1 if after is not None else 0
        page = models[start : start + int(limit)]
        has_more = start + int(limit) < len(models)
    first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
    return {"data": page, "first_id": first, "last_id": last, "has_more": has_more}


def _find(pool: EnginePool, model_id: str) -> PoolModel:
    name = pool.resolve(model_id)  # ModelNotFound → 404 in OpenAI's shape
    return next(model for model in pool.models() if model.name == name)


@router.get("/v1/models")
async def list_models(request: Request, pool: PoolDep) -> dict[str, Any]:
    models = pool.models()
    if _anthropic(request):
        return _anthropic_page([_anthropic_model(m) for m in models if m.kind == "chat"], request)
    return {"object": "list", "data": [_model_object(m) for m in models]}


@router.post("/v1/models/{model_id:path}/load")
async def load_model(model_id: str, pool: PoolDep) -> dict[str, Any]:
    await pool.load(model_id)
    return _model_object(_find(pool, model_id))


@router.post("/v1/models/{model_id:path}/unload")
async def unload_model(model_id: str, pool: PoolDep) -> dict[str, Any]:
    """Drains the model (its running requests finish) and unloads it; a later request loads
    it again."""
    await pool.unload(model_id)
    return _model_object(_find(pool, model_id))


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, pool: PoolDep) -> dict[str, Any]:
    model = _find(pool, model_id)
    return _anthropic_model(model) if _anthropic(request) else _model_object(model)
