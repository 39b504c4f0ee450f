"""`GET /v1/models` and `GET /v1/models/{id}` (spec `ListModelsResponse`, `Model`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from engines.errors import ModelNotFound
from engines.llm.engine import ModelInfo

router = APIRouter()


def _model_object(info: ModelInfo) -> dict[str, Any]:
    return {"id": info.name, "object": "model", "created": info.created, "owned_by": "mlxd"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_object(i) for i in request.app.state.pool.models()]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    for info in request.app.state.pool.models():
        if info.name == model_id:
            return _model_object(info)
    raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
