"""EnginePool: model names → engines, loaded when first asked for and unloaded when idle.

Each configured model is a `ModelSpec` (name, kind, aliases, a factory that builds a fresh engine,
pinned or not, idle TTL, estimated memory). The pool loads a model on its first request (concurrent
first requests share one load), unloads it after its idle TTL unless pinned, and keeps the loaded
models within a memory budget by unloading the least recently used idle ones; a model that still
cannot fit is refused with 503 naming what holds the memory.

Invariants:
- `acquire*` either returns a loaded engine of the asked kind or raises before any work is
  queued. While a model is being unloaded (drained: its running requests finish), new requests
  for it wait and then load it again.
- From `begin_drain` (the server is shutting down) on, `acquire*` raises ShuttingDown.
- Names and aliases are unique across kinds.
- A name that is neither is 404 (ModelNotFound), unless a default model is configured: then a
  request of the default model's kind is served by it (other kinds still get 404), so agents
  that send their own model names (`claude-opus-5-5`, `gpt-5-codex`) reach the local model.
- Engines built by a factory are used once: an unloaded model gets a fresh engine next time.
- Models may be added while serving (`add`: one pulled through Ollama's `/api/pull`) and removed
  (`remove`), never while loading, unloading or serving requests (ModelInUse); a removed name is
  unknown at once, before its engine stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engines.device_memory import check_fits
from engines.errors import (
    EngineUnavailable,
    ModelInUse,
    ModelNotFound,
    ShuttingDown,
    WrongModelKind,
)
from engines.kinds import CHAT, KINDS, Engine, EngineKind
from engines.types import EngineStats

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Engine)


@dataclass(frozen=True)
class ModelSpec:
    """One configured model. `factory` builds a fresh, unstarted engine (called per load)."""

    name: str
    kind: str  # a name in engines.kinds.KINDS
    factory: Callable[[], Any]
    aliases: tuple[str, ...] = ()
    pinned: bool = False  # never unloaded for idleness or to make room
    preload: bool = False  # loaded at start rather than on first request
    idle_ttl_s: float | None = None  # unloaded after this long without requests
    size_bytes: int = 0  # estimated memory when loaded (weights), for the budget
    kv_bytes: int = 0  # the KV budget a chat engine reserves, counted when checking it fits
    sampling_defaults: tuple[tuple[str, float], ...] = ()  # for fields a request leaves out
    # A hub model not yet in the cache (engines.weights.hub_download.ModelDownload): requests
    # start it and get 503 + Retry-After until it is done; the factory runs only after.
    download: Any = None
    source: str | None = None  # what its entry named: a store name, a directory or a repo id
    pulled: bool = False  # added while serving (/api/pull), so /api/delete may remove it


@dataclass(frozen=True)
class PoolModel:
    """What /v1/models shows of a configured model."""

    name: str
    kind: str
    loaded: bool
    created: int
    aliases: tuple[str, ...]
    preload: bool = False  # loaded at start, so /health counts it as missing when not loaded
    error: str | None = None  # why its last load failed, if it did
    status: str | None = None  # "downloading 42%" while a hub model is fetched
    context_length: int | None = None  # a loaded chat model's effective context (cap included)


@dataclass
class _Slot:
    spec: ModelSpec
    engine: Any = None
    loading: asyncio.Task[Any] | None = None
    unloading: asyncio.Event | None = None  # set when an unload finishes
    last_used: float = field(default_factory=time.monotonic)
    loads: int = 0
    load_error: str | None = None  # why the last load failed (cleared by a successful one)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def loaded(self) -> bool:
        return self.engine is not None and self.engine.running


def _context_length(engine: Any) -> int | None:
    """The context window a loaded engine serves, for kinds that have one."""
    length = getattr(getattr(engine, "info", None), "context_length", None)
    return length if isinstance(length, int) else None


def _weights_bytes(spec: ModelSpec) -> int:
    """A model's weights: as configured, or, for a hub model, once its download is done (0
    before)."""
    return spec.download.size_bytes if spec.download is not None else spec.size_bytes


def _given(engine: Any) -> Callable[[], Any]:
    """A factory for a ready-made engine: always that engine."""
    return lambda: engine


class EnginePool:
    def __init__(
        self,
        ready: Iterable[Engine] = (),
        specs: Iterable[ModelSpec] = (),
        memory_budget_bytes: int | None = None,
        reap_interval_s: float = 1.0,
        device_memory: tuple[int, str] | None = None,
        default_model: str | None = None,
    ) -> None:
        """`ready`: ready-made engines (each names its `kind`), served pinned and loaded at start
        (tests, single-model setups); `specs`: configured models (lazy unless `preload`);
        `device_memory`: (bytes, what they are) a model must fit, checked before each load;
        `default_model`: a name or alias that serves requests naming no configured model."""
        given = [
            ModelSpec(engine.name, engine.kind, _given(engine), pinned=True, preload=True)
            for engine in ready
        ]
        self._slots: dict[str, _Slot] = {}
        self._names: dict[str, str] = {}  # name or alias → name
        for spec in [*given, *specs]:
            for name in (spec.name, *spec.aliases):
                if name in self._names:
                    raise ValueError(f"model name {name!r} is used twice")
                self._names[name] = spec.name
            self._slots[spec.name] = _Slot(spec)
        if default_model is not None and default_model not in self._names:
            raise ValueError(f"the default model {default_model!r} is not a configured model")
        self.default_model = self._names[default_model] if default_model is not None else None
        self._defaulted: set[str] = set()  # unknown names already logged as defaulted
        self.memory_budget_bytes = memory_budget_bytes
        self.device_memory = device_memory
        self._reap_interval_s = reap_interval_s
        self._reaper: asyncio.Task[None] | None = None
        self._downloads: list[asyncio.Task[None]] = []
        self._draining = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the models marked preload (and the ready-made ones); start the idle reaper.

        A model that fails to load is reported (log, `/health`, `/v1/models`; a request for it
        tries again and gets 503 naming the reason) and the others keep serving; only when no
        model is left to serve does start-up fail (EngineUnavailable naming every reason).
        """
        preloads = [slot for slot in self._slots.values() if slot.spec.preload]
        downloading = [s for s in preloads if s.spec.download and not s.spec.download.ready]
        preloads = [slot for slot in preloads if slot not in downloading]
        results = await asyncio.gather(
            *(self._ensure(slot) for slot in preloads), return_exceptions=True
        )
        for slot, result in zip(preloads, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            if isinstance(result, Exception):
                logger.error("model %s failed to load: %s", slot.spec.name, result)
        failed = [slot for slot in self._slots.values() if slot.load_error is not None]
        if failed and len(failed) == len(self._slots):
            reasons = "; ".join(f"{slot.spec.name}: {slot.load_error}" for slot in failed)
            raise EngineUnavailable(f"no model could be loaded ({reasons})")
        self._reaper = asyncio.create_task(self._reap_idle())
        self._downloads = [asyncio.create_task(self._load_downloaded(s)) for s in downloading]

    async def _load_downloaded(self, slot: _Slot) -> None:
        """A preloaded hub model: download it in the background, then load it."""
        try:
            await slot.spec.download.wait()
            await self._ensure(slot)
        except Exception as exc:  # a request for it retries and reports why
            logger.error("model %s could not be downloaded and loaded: %s", slot.spec.name, exc)

    def begin_drain(self) -> None:
        """Refuse new work from now on (ShuttingDown); work in flight goes on. Idempotent."""
        self._draining = True
        if self._reaper is not None:
            self._reaper.cancel()

    async def drain(self, timeout: float = 30.0) -> None:
        """Refuse new work, let work in flight finish (up to `timeout`), then stop engines."""
        self.begin_drain()
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for slot in self._slots.values():
            if slot.engine is not None:
                await asyncio.to_thread(slot.engine.stop)
                slot.engine = None

    # -- requests ------------------------------------------------------------------------------

    async def acquire(self, model: str, kind: EngineKind[E]) -> E:
        """The running engine for `model`, which must be of `kind` (loaded first if need be)."""
        slot = self._slot(model, kind.name)
        if slot.spec.kind != kind.name:
            raise WrongModelKind(model, KINDS[slot.spec.kind].noun, kind.noun)
        engine: E = await self._ensure(slot)
        return engine

    def sampling_defaults(self, model: str) -> dict[str, float]:
        """The chat sampling defaults of the model serving `model` (the default model's for a
        name it serves)."""
        return dict(self._slot(model, CHAT.name).spec.sampling_defaults)

    def resolve(self, model: str) -> str:
        """The configured name for a name or alias (ModelNotFound otherwise: the default model
        serves requests, it does not make every name a model that exists)."""
        return self._slot(model).spec.name

    def _slot(self, model: str, kind: str | None = None) -> _Slot:
        """The slot of a name or alias; for a request of `kind`, of the default model when the
        name is unknown and the default is of that kind."""
        name = self._names.get(model)
        default = self.default_model
        if name is None and default is not None and self._slots[default].spec.kind == kind:
            name = default
            if model not in self._defaulted and len(self._defaulted) < 256:  # bounded: the
                self._defaulted.add(model)  # names come from clients
                logger.info("model %r is not configured: served by %s", model, name)
        if name is None:
            raise ModelNotFound(f"The model '{model}' does not exist", param="model")
        return self._slots[name]

    async def _ensure(self, slot: _Slot) -> Any:
        """The slot's running engine, loading it first (once, however many ask at a time)."""
        while True:
            if self._draining:
                raise ShuttingDown("The server is shutting down and takes no new requests")
            if slot.unloading is not None:
                await slot.unloading.wait()
                continue
            slot.last_used = time.monotonic()
            if slot.loaded:
                return slot.engine
            if slot.spec.download is not None:
                slot.spec.download.check()  # raises ModelDownloading until it is downloaded
            if slot.loading is None:
                slot.loading = asyncio.create_task(self._load(slot))
            await asyncio.shield(slot.loading)

    async def _load(self, slot: _Slot) -> None:
        try:
            self.check_fits(slot.spec.name)
            await self._make_room(slot)
            engine = slot.spec.factory()
            engine.start()
            await engine.wait_loaded()
            slot.engine, slot.loads = engine, slot.loads + 1
            slot.created = int(time.time())
            slot.load_error = None
            logger.info("loaded %s", slot.spec.name)
        except Exception as exc:
            slot.load_error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            raise
        finally:
            slot.loading = None

    # -- models added and removed while serving ---------------------------------------------------

    def add(self, spec: ModelSpec) -> None:
        """Serve one more model (lazy: loaded on its first request); ValueError when its name or
        an alias is taken."""
        taken = [name for name in (spec.name, *spec.aliases) if name in self._names]
        if taken:
            raise ValueError(f"model name {taken[0]!r} is used already")
        for name in (spec.name, *spec.aliases):
            self._names[name] = spec.name
        self._slots[spec.name] = _Slot(spec)

    async def remove(self, model: str) -> ModelSpec:
        """Stop serving `model` (its name or an alias; its spec returned): unknown from now on,
        then its engine, if loaded, stopped. ModelInUse, changing nothing, while it loads,
        unloads or serves a request."""
        slot = self._slots[self.resolve(model)]
        if slot.loading is not None or slot.unloading is not None:
            raise ModelInUse(f"model '{model}' is being loaded or unloaded; try again shortly")
        if slot.engine is not None and slot.engine.active:
            raise ModelInUse(
                f"model '{model}' is serving {slot.engine.active} request(s); try again when "
                "they are done"
            )
        del self._slots[slot.spec.name]
        for name in (slot.spec.name, *slot.spec.aliases):
            del self._names[name]
        engine, slot.engine = slot.engine, None
        if engine is not None:
            await asyncio.to_thread(engine.stop)
        logger.info("removed %s", slot.spec.name)
        return slot.spec

    def spec(self, model: str) -> ModelSpec:
        """The spec of a configured name or alias (ModelNotFound otherwise; no default model)."""
        return self._slots[self.resolve(model)].spec

    def specs(self) -> list[ModelSpec]:
        return [slot.spec for slot in self._slots.values()]

    # -- memory and unloading ------------------------------------------------------------------

    def check_fits(self, model: str) -> None:
        """ModelTooLarge (503 naming the numbers) when the model's weights and KV budget exceed
        the device's usable memory; a hub model not downloaded yet is checked once it is."""
        spec = self._slot(model).spec
        if self.device_memory is not None:
            usable, what = self.device_memory
            check_fits(spec.name, _weights_bytes(spec), spec.kv_bytes, usable, what)

    def _held_bytes(self) -> int:
        return sum(_weights_bytes(s.spec) for s in self._slots.values() if s.engine is not None)

    async def _make_room(self, slot: _Slot) -> None:
        budget = self.memory_budget_bytes
        if budget is None:
            return
        size = _weights_bytes(slot.spec)
        while self._held_bytes() + size > budget:
            idle = [
                s
                for s in self._slots.values()
                if s is not slot and s.loaded and not s.spec.pinned and s.engine.active == 0
            ]
            if not idle:
                holders = ", ".join(
                    f"{s.spec.name} ({_weights_bytes(s.spec) / 2**20:.0f} MiB, "
                    f"{'pinned' if s.spec.pinned else 'busy'})"
                    for s in self._slots.values()
                    if s.engine is not None
                )
                raise EngineUnavailable(
                    f"model '{slot.spec.name}' needs {size / 2**20:.0f} MiB and "
                    f"the memory budget of {budget / 2**20:.0f} MiB is held by: {holders}"
                )
            victim = min(idle, key=lambda s: s.last_used)
            logger.info("unloading %s to make room for %s", victim.spec.name, slot.spec.name)
            await self.unload(victim.spec.name)

    async def unload(self, model: str) -> bool:
        """Drain the model (running requests finish; new ones wait), then stop its engine.
        False when it was not loaded."""
        slot = self._slot(model)
        if slot.engine is None or slot.unloading is not None:
            return False
        slot.unloading = asyncio.Event()
        try:
            while slot.engine.active:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(slot.engine.stop)
            slot.engine = None
            logger.info("unloaded %s", slot.spec.name)
        finally:
            done, slot.unloading = slot.unloading, None
            done.set()
        return True

    async def load(self, model: str) -> None:
        await self._ensure(self._slot(model))

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval_s)
            now = time.monotonic()
            for slot in list(self._slots.values()):
                ttl = slot.spec.idle_ttl_s
                if (
                    ttl is not None
                    and not slot.spec.pinned
                    and slot.loaded
                    and slot.engine.active == 0
                    and now - slot.last_used > ttl
                ):
                    with contextlib.suppress(Exception):
                        await self.unload(slot.spec.name)

    # -- introspection -------------------------------------------------------------------------

    def engine(self, model: str) -> Any:
        """The loaded engine for `model`, or None (tests and diagnostics)."""
        return self._slot(model).engine

    def loads(self, model: str) -> int:
        return self._slot(model).loads

    def stats(self) -> dict[str, EngineStats]:
        return {s.spec.name: s.engine.stats() for s in self._slots.values() if s.engine is not None}

    def models(self) -> list[PoolModel]:
        return [
            PoolModel(
                s.spec.name,
                s.spec.kind,
                s.loaded,
                s.created,
                s.spec.aliases,
                s.spec.preload,
                s.load_error,
                s.spec.download.status if s.spec.download is not None else None,
                _context_length(s.engine) if s.loaded else None,
            )
            for s in self._slots.values()
        ]

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def active(self) -> int:
        return sum(s.engine.active for s in self._slots.values() if s.engine is not None)
