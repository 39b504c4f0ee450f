"""A scripted fake chat engine: the HTTP contract without MLX.

It follows the real engine's contract — one thread pushes events into RequestStreams, cancellation
is seen at the next step, `active` counts live sequences — but "generates" a scripted reply, one
character per token, at a configurable pace.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from engines.bridge import RequestStream
from engines.errors import EngineFailed
from engines.llm.engine import LLMEngine, ModelInfo
from engines.types import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent, Usage


class FakeEngine:
    def __init__(
        self,
        name: str = "fake",
        reply: str = "Hello there!",
        token_delay_s: float = 0.0,
        context_length: int = 64,
        fail_after: int | None = None,
    ) -> None:
        self.name = name
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.fail_after = fail_after
        self.info: ModelInfo | None = None
        self._context_length = context_length
        self._active = 0
        self._lock = threading.Lock()
        self.requests: list[GenerationRequest] = []
        self.tokens_generated = 0
        self._running = False

    @property
    def active(self) -> int:
        return self._active

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        self.info = ModelInfo(self.name, "/fake", self._context_length, frozenset({0}), 1700000000)
        self._running = True

    async def wait_loaded(self) -> None:
        return None

    def stop(self, timeout: float | None = None) -> None:
        self._running = False

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        text = "".join(f"<{m['role']}>{m.get('content') or ''}" for m in messages)
        return [ord(c) for c in text]

    check_fits = LLMEngine.check_fits

    def submit(self, request: GenerationRequest) -> RequestStream:
        stream = RequestStream(request.request_id)
        self.requests.append(request)
        with self._lock:
            self._active += 1
        threading.Thread(target=self._generate, args=(request, stream), daemon=True).start()
        return stream

    def _generate(self, request: GenerationRequest, stream: RequestStream) -> None:
        produced = 0
        reason = "length"
        for char in self.reply:
            if stream.cancelled:
                reason = "cancelled"
                break
            if produced >= request.max_tokens:
                break
            if self.fail_after is not None and produced == self.fail_after:
                self._end(stream, ErrorEvent(EngineFailed("engine error: scripted failure")))
                return
            time.sleep(self.token_delay_s)
            produced += 1
            self.tokens_generated += 1
            stream.push(TokenEvent(char, [ord(char)]))
        else:
            reason = "stop"
        usage = Usage(len(request.prompt_tokens), produced)
        self._end(stream, FinishEvent(reason, usage))  # type: ignore[arg-type]

    def _end(self, stream: RequestStream, event: FinishEvent | ErrorEvent) -> None:
        with self._lock:
            self._active -= 1
        stream.push(event)
