"""`GET /health`: 200 when every configured model is loaded and serving, else 503."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    pool = request.app.state.pool
    models = [info.name for info in pool.models()]
    ready = bool(models) and not pool.draining
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "models": models, "active": pool.active},
        status_code=200 if ready else 503,
    )
