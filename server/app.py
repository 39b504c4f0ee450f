"""The app factory: `create_app(settings, pool=None)`.

The lifespan starts the pool (loading models on their engine threads) and drains it at shutdown.
Tests pass a pool of scripted fake engines; `__main__` builds the real one from settings.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from engines.errors import ModelNotFound
from engines.pool import EnginePool
from server.errors import install_error_handlers
from server.logs import RequestId
from server.metrics import Metrics, RequestCounter
from server.routes import audio, chat, completions, health, metrics, models, status
from server.security import AccessControl, ConcurrencyLimit
from server.settings import Settings

logger = logging.getLogger(__name__)


def build_pool(settings: Settings) -> EnginePool:
    """The pool for `settings.model` and `settings.speech_model` (store names or directories)."""
    from engines.asr.engine import ASREngine, ASRLimits
    from engines.llm.engine import EngineLimits, LLMEngine
    from engines.weights.store import ModelStore

    store = ModelStore(settings.home)
    name, path = store.resolve(settings.model)
    limits = EngineLimits(
        max_batch=settings.max_batch,
        max_waiting=settings.max_waiting,
        kv_budget_bytes=settings.kv_budget_mb * 2**20 if settings.kv_budget_mb else None,
        prefix_cache_bytes=settings.prefix_cache_mb * 2**20,
        watchdog_s=settings.watchdog_s,
    )
    speech = []
    speech_model = settings.speech_model
    if speech_model and "speech_model" not in settings.model_fields_set:
        try:  # the default speech model is served when it was imported, not required
            store.resolve(speech_model)
        except ModelNotFound:
            logger.warning(
                "no speech model: %r is not in the store (mlxd import --embedded)", speech_model
            )
            speech_model = ""
    if speech_model:
        speech_name, speech_path = store.resolve(speech_model)
        asr_limits = ASRLimits(
            max_batch=settings.asr_max_batch,
            max_waiting=settings.max_waiting,
            watchdog_s=settings.watchdog_s,
        )
        speech.append(ASREngine(speech_name, speech_path, asr_limits))
    return EnginePool([LLMEngine(name, path, settings.prefill_chunk, limits)], speech)


def create_app(settings: Settings, pool: EnginePool | None = None) -> FastAPI:
    engine_pool = pool if pool is not None else build_pool(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine_pool.start()
        logger.info("serving %s", ", ".join(m.name for m in engine_pool.models()))
        yield
        await engine_pool.drain(settings.drain_timeout_s)

    app = FastAPI(
        title="mlxd",
        summary="OpenAI-compatible inference on MLX",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.pool = engine_pool
    app.state.metrics = Metrics(engine_pool)
    install_error_handlers(app)
    app.add_middleware(
        AccessControl,
        allowed_hosts=settings.host_allowlist(),
        allowed_origins=settings.origins(),
        api_keys=settings.api_keys(),
        max_header_bytes=settings.max_header_bytes,
    )
    if settings.origins():  # outermost, so browsers' preflight requests are answered first
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.origins(),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
        )
    app.add_middleware(ConcurrencyLimit, limit=settings.max_connections)
    app.add_middleware(RequestCounter, metrics=app.state.metrics)  # counts refusals too
    app.add_middleware(RequestId)  # outermost: refusals get an id and are logged with it
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(audio.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(status.router)
    return app


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn must run this app (shared by `mlxd serve` and the socket tests)."""
    return {
        "timeout_graceful_shutdown": int(settings.drain_timeout_s) + 1,
        # Let oversized headers reach AccessControl, which answers 431 in OpenAI's shape.
        "h11_max_incomplete_event_size": settings.max_header_bytes * 2,
    }
