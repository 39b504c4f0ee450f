"""The app factory: `create_app(settings, pool=None)`.

The lifespan starts the pool (loading models on their engine threads) and drains it at shutdown.
Tests pass a pool of scripted fake engines; `__main__` builds the real one from settings.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from engines.pool import EnginePool
from server.errors import install_error_handlers
from server.routes import chat, completions, health, models
from server.settings import Settings

logger = logging.getLogger(__name__)


def build_pool(settings: Settings) -> EnginePool:
    """The pool for `settings.model` (a store name or an MLX model directory)."""
    from engines.llm.engine import EngineLimits, LLMEngine
    from engines.weights.store import ModelStore

    name, path = ModelStore(settings.home).resolve(settings.model)
    limits = EngineLimits(
        max_batch=settings.max_batch,
        max_waiting=settings.max_waiting,
        kv_budget_bytes=settings.kv_budget_mb * 2**20 if settings.kv_budget_mb else None,
        prefix_cache_bytes=settings.prefix_cache_mb * 2**20,
    )
    return EnginePool([LLMEngine(name, path, settings.prefill_chunk, limits)])


def create_app(settings: Settings, pool: EnginePool | None = None) -> FastAPI:
    engine_pool = pool if pool is not None else build_pool(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine_pool.start()
        logger.info("serving %s", ", ".join(i.name for i in engine_pool.models()))
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
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(models.router)
    app.include_router(health.router)
    return app
