"""EnginePool: maps model names to running engines.

This first version serves a fixed set of models loaded at start; the interface (`acquire`,
`models`, `start`, `drain`) is the one later pool features (lazy load, TTL, memory budget) keep.
Invariant: `acquire` either returns a loaded engine or raises before any work is queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

from engines.bridge import RequestStream
from engines.errors import EngineUnavailable, ModelNotFound
from engines.llm.engine import ModelInfo
from engines.types import EngineStats, GenerationRequest

logger = logging.getLogger(__name__)


class TextEngine(Protocol):
    """What the HTTP edge may call on a chat engine (LLMEngine, or a scripted fake in tests)."""

    name: str
    info: ModelInfo | None
    vocab_size: int

    @property
    def active(self) -> int: ...

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    async def wait_loaded(self) -> None: ...

    def stop(self, timeout: float | None = ...) -> None: ...

    def stats(self) -> EngineStats: ...

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]: ...

    def encode_text(self, text: str) -> list[int]: ...

    def encode_fim(self, prefix: str, suffix: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...

    def check_fits(self, prompt_tokens: int, max_tokens: int | None, param: str = ...) -> int: ...

    def submit(self, request: GenerationRequest) -> RequestStream: ...


class EnginePool:
    def __init__(self, engines: Iterable[TextEngine]) -> None:
        self._engines = {engine.name: engine for engine in engines}
        self._draining = False

    async def start(self) -> None:
        """Start every engine thread and wait until all models are loaded."""
        for engine in self._engines.values():
            engine.start()
        await asyncio.gather(*(engine.wait_loaded() for engine in self._engines.values()))

    def acquire(self, model: str) -> TextEngine:
        engine = self._engines.get(model)
        if engine is None:
            raise ModelNotFound(f"The model '{model}' does not exist", param="model")
        if self._draining or not engine.running:
            raise EngineUnavailable(f"The model '{model}' is not available right now")
        return engine

    def stats(self) -> dict[str, EngineStats]:
        return {name: engine.stats() for name, engine in self._engines.items()}

    def models(self) -> list[ModelInfo]:
        return [e.info for e in self._engines.values() if e.info is not None and e.running]

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def active(self) -> int:
        return sum(engine.active for engine in self._engines.values())

    async def drain(self, timeout: float = 30.0) -> None:
        """Refuse new work, let work in flight finish (up to `timeout`), then stop engines."""
        self._draining = True
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for engine in self._engines.values():
            await asyncio.to_thread(engine.stop)
