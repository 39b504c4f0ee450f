"""EnginePool: maps model names to running engines.

This first version serves a fixed set of models loaded at start: chat engines and speech engines;
the interface (`acquire`, `acquire_speech`, `models`, `start`, `drain`) is the one later pool
features (lazy load, TTL, memory budget) keep.
Invariants: `acquire*` either returns a loaded engine of the asked kind or raises before any
work is queued; model names are unique across kinds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

from engines.asr.engine import SpeechModelInfo, TranscriptionRequest
from engines.bridge import RequestStream
from engines.errors import EngineUnavailable, InvalidRequest, ModelNotFound
from engines.llm.engine import ModelInfo
from engines.types import EngineStats, GenerationRequest

logger = logging.getLogger(__name__)


class Engine(Protocol):
    """What every engine offers the pool: a name, a thread to start and stop, counters."""

    name: str

    @property
    def active(self) -> int: ...

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    async def wait_loaded(self) -> None: ...

    def stop(self, timeout: float | None = ...) -> None: ...

    def stats(self) -> EngineStats: ...


class TextEngine(Engine, Protocol):
    """What the HTTP edge may call on a chat engine (LLMEngine, or a scripted fake in tests)."""

    info: ModelInfo | None
    vocab_size: int

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = ...,
        template_kwargs: dict[str, Any] | None = ...,
    ) -> list[int]: ...

    def check_grammar(self, grammar: str, param: str) -> None: ...

    def encode_text(self, text: str) -> list[int]: ...

    def encode_fim(self, prefix: str, suffix: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...

    def check_fits(self, prompt_tokens: int, max_tokens: int | None, param: str = ...) -> int: ...

    def submit(self, request: GenerationRequest) -> RequestStream: ...


class SpeechEngine(Engine, Protocol):
    """What the HTTP edge may call on a speech-to-text engine (ASREngine, or a fake in tests)."""

    info: SpeechModelInfo | None

    def check_language(self, language: str | None, task: str) -> str | None: ...

    def submit(self, request: TranscriptionRequest) -> RequestStream: ...


_E = TypeVar("_E", TextEngine, SpeechEngine)


class EnginePool:
    def __init__(self, engines: Iterable[TextEngine], speech: Iterable[SpeechEngine] = ()) -> None:
        self._text = {engine.name: engine for engine in engines}
        self._speech = {engine.name: engine for engine in speech}
        if self._text.keys() & self._speech.keys():
            raise ValueError(f"model names used twice: {self._text.keys() & self._speech.keys()}")
        self._engines: dict[str, TextEngine | SpeechEngine] = {**self._text, **self._speech}
        self._draining = False

    async def start(self) -> None:
        """Start every engine thread and wait until all models are loaded."""
        for engine in self._engines.values():
            engine.start()
        await asyncio.gather(*(engine.wait_loaded() for engine in self._engines.values()))

    def acquire(self, model: str) -> TextEngine:
        if model in self._speech:
            raise InvalidRequest(
                f"'{model}' is a speech-to-text model; use /v1/audio/transcriptions",
                param="model",
            )
        return self._check(model, self._text.get(model))

    def acquire_speech(self, model: str) -> SpeechEngine:
        if model in self._text:
            raise InvalidRequest(
                f"'{model}' is a chat model, not a speech-to-text model", param="model"
            )
        return self._check(model, self._speech.get(model))

    def _check(self, model: str, engine: _E | None) -> _E:
        if engine is None:
            raise ModelNotFound(f"The model '{model}' does not exist", param="model")
        if self._draining or not engine.running:
            raise EngineUnavailable(f"The model '{model}' is not available right now")
        return engine

    def stats(self) -> dict[str, EngineStats]:
        return {name: engine.stats() for name, engine in self._engines.items()}

    def models(self) -> list[ModelInfo | SpeechModelInfo]:
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
