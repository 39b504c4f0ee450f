"""`GET /health`: 200 when the server is serving — every model loaded at start (`preload`, which
includes the models of `mlxd serve --model …`) is loaded, no engine is stalled (busy with a step
loop that has not moved for the watchdog's threshold) and the server is not draining — else 503
with `"status"` `unavailable` or `stalled`, and `missing`: each preloaded model not loaded → why.
Models loaded on first use are not required (an idle, unloaded model is healthy). The body
carries each loaded engine's counters (active and queued requests, largest batch, prefix cache,
failed steps)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.deps import PoolDep

router = APIRouter()


@router.get("/health")
async def health(pool: PoolDep) -> JSONResponse:
    configured = pool.models()
    models = [model.name for model in configured if model.loaded]
    missing = {
        model.name: model.error or "not loaded"
        for model in configured
        if model.preload and not model.loaded
    }
    stats = pool.stats()
    stalled = [name for name, engine in stats.items() if engine.stalled]
    ready = bool(configured) and not pool.draining and not stalled and not missing
    body = {
        "status": "ok" if ready else ("stalled" if stalled else "unavailable"),
        "models": models,
        "missing": missing,
        "active": pool.active,
        "engines": {name: asdict(engine) for name, engine in stats.items()},
    }
    return JSONResponse(body, status_code=200 if ready else 503)
