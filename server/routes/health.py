"""`GET /health`: 200 when every configured model is loaded and serving, else 503 (also when the
watchdog sees a busy engine whose step loop has not moved: `"status": "stalled"`); with each
engine's counters (active and queued requests, largest batch, prefix cache, failed steps)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    pool = request.app.state.pool
    models = [model.name for model in pool.models() if model.loaded]
    stats = pool.stats()
    stalled = [name for name, engine in stats.items() if engine.stalled]
    ready = bool(pool.models()) and not pool.draining and not stalled
    body = {
        "status": "ok" if ready else ("stalled" if stalled else "unavailable"),
        "models": models,
        "active": pool.active,
        "engines": {name: asdict(engine) for name, engine in stats.items()},
    }
    return JSONResponse(body, status_code=200 if ready else 503)
