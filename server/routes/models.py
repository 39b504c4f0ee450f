"""`GET /v1/models` and `GET /v1/models/{id}` (spec `ListModelsResponse`, `Model`), with a
`loaded` extension field; and the admin routes `POST /v1/models/{id}/load` and `/unload`
(behind the API key when one is set, like every /v1 route).

Every configured model is listed, loaded or not (a request for one loads it); ids are the
configured names, and aliases resolve to them. A loaded chat model shows `context_window`, the
context it serves (a models-file `context_length` cap included): what agent clients size their
history by.

Asked with an `anthropic-version` header (Anthropic's SDK and clients), the two GET routes answer
in Anthropic's shape (`ModelInfo`, a page with `first_id`/`last_id`/`has_more`), chat models only,
`max_input_tokens` being the context window.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from engines.pool import EnginePool, PoolModel
from server.deps import PoolDep

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


def _find(pool: EnginePool, model_id: str) -> PoolModel:
    name = pool.resolve(model_id)  # ModelNotFound → 404 in OpenAI's shape
    return next(model for model in pool.models() if model.name == name)


@router.get("/v1/models")
async def list_models(request: Request, pool: PoolDep) -> dict[str, Any]:
    models = pool.models()
    if _anthropic(request):
        data = [_anthropic_model(m) for m in models if m.kind == "chat"]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return {"data": data, "first_id": first, "last_id": last, "has_more": False}
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
