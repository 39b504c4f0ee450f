"""`GET /v1/models` and `GET /v1/models/{id}` (spec `ListModelsResponse`, `Model`), with a
`loaded` extension field; and the admin routes `POST /v1/models/{id}/load` and `/unload`
(behind the API key when one is set, like every /v1 route).

Every configured model is listed, loaded or not (a request for one loads it); ids are the
configured names, and aliases resolve to them. A loaded chat model shows `context_window`, the
context it serves (a models-file `context_length` cap included): what agent clients size their
history by.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from engines.pool import PoolModel

router = APIRouter()


def _model_object(model: PoolModel) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": "mlxd",
        "loaded": model.loaded,
        **({"status": model.status} if model.status else {}),  # "downloading 42%"
        **({"context_window": model.context_length} if model.context_length else {}),
    }


def _find(request: Request, model_id: str) -> PoolModel:
    pool = request.app.state.pool
    name = pool.resolve(model_id)  # ModelNotFound → 404 in OpenAI's shape
    return next(model for model in pool.models() if model.name == name)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_object(m) for m in request.app.state.pool.models()]}


@router.post("/v1/models/{model_id:path}/load")
async def load_model(model_id: str, request: Request) -> dict[str, Any]:
    await request.app.state.pool.load(model_id)
    return _model_object(_find(request, model_id))


@router.post("/v1/models/{model_id:path}/unload")
async def unload_model(model_id: str, request: Request) -> dict[str, Any]:
    """Drains the model (its running requests finish) and unloads it; a later request loads
    it again."""
    await request.app.state.pool.unload(model_id)
    return _model_object(_find(request, model_id))


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    return _model_object(_find(request, model_id))
