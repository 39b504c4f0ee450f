"""`GET /health`: 200 when every configured model is loaded and serving, else 503; with each
engine's counters (active and queued requests, largest batch, prefix-cache hits and misses)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    pool = request.app.state.pool
    models = [info.name for info in pool.models()]
    ready = bool(models) and not pool.draining
    body = {
        "status": "ok" if ready else "unavailable",
        "models": models,
        "active": pool.active,
        "engines": {name: asdict(stats) for name, stats in pool.stats().items()},
    }
    return JSONResponse(body, status_code=200 if ready else 503)
