"""The app factory: `create_app(settings, pool=None)`.

The lifespan starts the pool (loading models on their engine threads) and stops it at shutdown;
the drain before that starts with uvicorn's shutdown (`server.drain`, `app.state.drain`).
Tests pass a pool of scripted fake engines; `__main__` builds the real one from settings.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.routing import Route

from engines.device_memory import chat_kv_bytes, usable_memory
from engines.errors import ModelNotFound
from engines.kinds import KINDS, detect_kind
from engines.pool import EnginePool, ModelSpec
from engines.weights.store import ModelStore
from server.body_timeout import BodyTimeout
from server.drain import Drain, backstop_s
from server.errors import install_error_handlers
from server.head import HeadAsGet
from server.hub_pulls import HubPulls, PulledRecord
from server.logs import RequestId
from server.metrics import Metrics, RequestCounter
from server.routes import (
    audio,
    chat,
    cohere,
    completions,
    embeddings,
    health,
    messages,
    metrics,
    models,
    ollama,
    ollama_models,
    rerank,
    responses,
    speech,
    status,
)
from server.security import AccessControl, ConcurrencyLimit, ShapedCORS
from server.settings import Settings
from server.startup_failure import OneLineStartupFailure
from server.trailing_slash import TrailingSlash

logger = logging.getLogger(__name__)

ROUTERS = (
    chat.router,
    messages.router,
    responses.router,
    completions.router,
    audio.router,
    speech.router,
    embeddings.router,
    rerank.router,
    cohere.router,
    models.router,
    ollama.router,
    ollama_models.router,
    health.router,
    metrics.router,
    status.router,
)


def build_pool(settings: Settings) -> EnginePool:
    """The pool for the models file (`settings.config`), or, without one, for `settings.model`
    and `settings.speech_model` (both pinned and loaded at start)."""
    from engines.weights.hub_download import served_name
    from server.config import ModelEntry, load_models_file
    from server.runtime import default_memory_budget

    device_memory = usable_memory()
    store = ModelStore(settings.home)
    budget_mb = settings.memory_budget_mb
    default_model = settings.default_model
    if settings.config is not None:
        models_file = load_models_file(settings.config)
        entries = models_file.models
        budget_mb = budget_mb or models_file.memory_budget_mb
        default_model = default_model or models_file.default_model
    else:
        chat_name = served_name(store, settings.model)
        entries = [ModelEntry(name=chat_name, source=settings.model, pinned=True, preload=True)]
        speech_model = settings.speech_model
        if speech_model and "speech_model" not in settings.model_fields_set:
            try:  # the default speech model is served when it was imported, not required
                store.resolve(speech_model)
            except ModelNotFound:
                logger.warning(
                    "no speech model: %r is not in the store (mlxd import --embedded)",
                    speech_model,
                )
                speech_model = ""
        if speech_model:
            speech_name, _ = store.resolve(speech_model)
            entries.append(
                ModelEntry(
                    name=speech_name, source=speech_model, kind="speech", pinned=True, preload=True
                )
            )
        entries.extend(_embedding_entry(settings, store))
    budget = budget_mb * 2**20 if budget_mb else default_memory_budget(device_memory[0])
    pool = EnginePool(specs=[_spec(entry, settings, store) for entry in entries],
                      memory_budget_bytes=budget, device_memory=device_memory,
                      default_model=default_model)  # fmt: skip
    for model in pool.models():  # refuse at start, in one line, what could never load
        if model.preload:
            pool.check_fits(model.name)
    _serve_pulled(pool, settings, store)
    return pool


def _serve_pulled(pool: EnginePool, settings: Settings, store: ModelStore) -> None:
    """Serve again the models pulled over Ollama's API (server/hub_pulls.py), unless configured
    under that name or no longer complete here (then skipped, with a warning)."""
    taken = {name for model in pool.models() for name in (model.name, *model.aliases)}
    for name in PulledRecord(settings.home).names():
        if name in taken:
            continue  # configured: served as configured
        try:
            store.resolve(name)  # still here (else pulled_spec would download it on first use)
            pool.add(pulled_spec(name, settings, store))
        except (ModelNotFound, ValueError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            logger.warning("pulled model %s is not served: %s", name, message)


def _embedding_entry(settings: Settings, store: Any) -> list[Any]:
    """The embedding model served beside the chat model (loaded on first use): the default one
    when it was imported (`mlxd import --embedded`), or the one asked for, which must exist."""
    from server.config import ModelEntry

    source = settings.embedding_model
    if not source:
        return []
    try:
        name, _ = store.resolve(source)
    except ModelNotFound:
        if "embedding_model" in settings.model_fields_set:
            raise
        logger.warning("no embedding model: %r is not in the store (mlxd import --embedded)",
                       source)  # fmt: skip
        return []
    return [ModelEntry(name=name, source=source, kind="embedding")]


def _spec(entry: Any, settings: Settings, store: Any) -> ModelSpec:
    """A pool entry for one configured model: how to build its engine (its kind's builder, fed
    the entry's and the settings' plain values), and its footprint."""
    try:
        _, path = store.resolve(entry.source)
    except ModelNotFound:
        return _hub_spec(entry, settings, store)  # a repo id not yet in the HF cache
    kind = entry.kind or detect_kind(path)  # left out: the checkpoint says what it is
    options = _options(entry, store)
    factory = KINDS[kind].factory(entry.name, path, options, settings.model_dump())
    draft = options["speculative"] if entry.speculative not in (None, "prompt_lookup") else None
    return ModelSpec(
        name=entry.name,
        kind=kind,
        factory=factory,
        aliases=tuple(entry.aliases),
        pinned=entry.pinned,
        preload=entry.preload,
        idle_ttl_s=entry.idle_ttl_s,
        # A draft model's weights are loaded with the model's (one engine holds both).
        size_bytes=store.size_bytes(path) + (store.size_bytes(Path(draft)) if draft else 0),
        kv_bytes=chat_kv_bytes(settings.kv_budget_mb) if kind == "chat" else 0,
        sampling_defaults=tuple(entry.sampling.values().items()),
        source=entry.source,
    )


def pulled_spec(name: str, settings: Settings, store: ModelStore) -> ModelSpec:
    """A pool entry for a hub model pulled while serving (`name`: its repo reference, complete
    in the Hugging Face cache or, a GGUF quant, imported into the store), as `--model name`
    would serve it: lazy, unpinned, marked pulled."""
    from server.config import ModelEntry

    entry = ModelEntry(name=name, source=name)
    return replace(_spec(entry, settings, store), pulled=True)


def _options(entry: Any, store: Any) -> dict[str, Any]:
    """The entry's values for its engine's builder; a draft model (`speculative` naming a model
    as `source` does) becomes its directory, or a ConfigError when there is none."""
    from server.config import ConfigError

    options: dict[str, Any] = entry.model_dump()
    if entry.speculative not in (None, "prompt_lookup"):
        try:
            options["speculative"] = str(store.resolve(entry.speculative)[1])
        except ModelNotFound as exc:
            raise ConfigError(f"model {entry.name!r}: speculative: {exc}") from exc
    return options


def _hub_spec(entry: Any, settings: Settings, store: Any) -> ModelSpec:
    """A pool entry for a hub model downloaded on first use (ModelNotFound when the source is
    no repo id, or HF_HUB_OFFLINE is set): its engine is built from the downloaded snapshot."""
    from engines.weights.hub_download import hub_source

    download = hub_source(store, entry.source)
    kind = KINDS[entry.kind or "chat"]
    options, values = _options(entry, store), settings.model_dump()
    return ModelSpec(
        name=entry.name,
        kind=kind.name,
        factory=lambda: kind.factory(entry.name, download.path, options, values)(),
        aliases=tuple(entry.aliases),
        pinned=entry.pinned,
        preload=entry.preload,
        idle_ttl_s=entry.idle_ttl_s,
        kv_bytes=chat_kv_bytes(settings.kv_budget_mb) if kind.name == "chat" else 0,
        sampling_defaults=tuple(entry.sampling.values().items()),
        download=download,
        source=entry.source,
    )


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
    app.state.drain = Drain(engine_pool, settings.drain_timeout_s)
    app.state.metrics = Metrics(engine_pool)
    store = ModelStore(settings.home)
    app.state.hub_pulls = HubPulls(
        engine_pool,
        store,
        lambda name: pulled_spec(name, settings, store),
        PulledRecord(settings.home),
    )
    install_error_handlers(app)
    app.add_middleware(HeadAsGet)  # innermost: the others see the HEAD as it came
    app.add_middleware(
        BodyTimeout, idle_s=settings.body_timeout_s, total_s=settings.body_deadline_s
    )
    app.add_middleware(
        AccessControl,
        allowed_hosts=settings.host_allowlist(),
        allowed_origins=settings.origins(),
        api_keys=settings.api_keys(),
        max_header_bytes=settings.max_header_bytes,
    )
    if settings.origins():  # outermost, so browsers' preflight requests are answered first
        app.add_middleware(
            ShapedCORS,
            allow_origins=settings.origins(),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            # The SDKs read these (request ids in errors, Retry-After to back off a 429/503);
            # a browser hides any response header not listed.
            expose_headers=["x-request-id", "request-id", "retry-after", "x-mlxd-ignored-fields"],
        )
    app.add_middleware(ConcurrencyLimit, limit=settings.max_connections)
    app.add_middleware(RequestCounter, metrics=app.state.metrics)  # counts refusals too
    app.add_middleware(RequestId)  # refusals get an id and are logged with it
    app.add_middleware(TrailingSlash)  # every layer sees the route's own path
    app.add_middleware(OneLineStartupFailure)  # outermost: the lifespan's messages
    for router in ROUTERS:
        app.include_router(router)
    # FastAPI nests included routers; the served routes, flat, for metrics labels and 405s.
    app.state.routes = tuple(
        route for router in ROUTERS for route in router.routes if isinstance(route, Route)
    )
    app.state.metrics.routes = frozenset(route.path for route in app.state.routes)
    return app


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn must run this app (shared by `mlxd serve` and the socket tests), with
    `server.drain.DrainingServer`."""
    return {
        # A backstop: the drain answers the work it cuts before this.
        "timeout_graceful_shutdown": backstop_s(settings.drain_timeout_s),
        # Let oversized headers reach AccessControl, which answers 431 in OpenAI's shape.
        "h11_max_incomplete_event_size": settings.max_header_bytes * 2,
    }
