"""LLMEngine: serves one mlx-lm model from its engine thread.

Step loop (one call of `step`):
1. Sequences whose client went away leave at once (their RequestStream was cancelled).
2. Prefill: prompt tokens are fed in chunks, at most `prefill_chunk` tokens per step across all
   prefilling sequences, so a long prompt delays running streams by at most one chunk per token.
3. Decode: for every running sequence, the next token is scheduled (lazily, `mx.async_eval`) before
   the previous one is read back, so the device works while the host detokenizes.

Invariants: all MLX work happens on the engine thread; only plain values reach RequestStreams; a
sequence's events end with exactly one FinishEvent or ErrorEvent.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.bridge import RequestStream
from engines.errors import ContextTooLong, InvalidRequest
from engines.llm.detokenize import IncrementalDetokenizer, StopMatcher
from engines.llm.sampling import TokenSampler
from engines.llm.templates import render_chat
from engines.types import (
    ErrorEvent,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    TokenEvent,
    Usage,
)
from engines.worker import EngineThread

logger = logging.getLogger(__name__)

# How often (in decode steps) MLX's buffer cache is trimmed, as mlx-lm does.
_CLEAR_CACHE_EVERY = 256


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP edge may know of a loaded model (plain values only)."""

    name: str
    path: str
    context_length: int
    eos_token_ids: frozenset[int]
    created: int


@dataclass
class _Sequence:
    request: GenerationRequest
    stream: RequestStream
    cache: list[Any]
    sampler: TokenSampler
    detokenizer: IncrementalDetokenizer
    stops: StopMatcher
    to_prefill: list[int]
    next_token: Any = None  # mx.array scheduled for the next read, once prefill is done
    generated: int = 0
    unsent_token_ids: list[int] = field(default_factory=list)


class LLMEngine(EngineThread):
    """One model, one thread. `submit` and the properties are called from the event loop."""

    def __init__(self, name: str, path: Path, prefill_chunk: int = 512) -> None:
        super().__init__(name)
        self.path = path
        self.prefill_chunk = prefill_chunk
        self.info: ModelInfo | None = None
        self.tokenizer: Any = None
        self._model: Any = None
        self._prefilling: list[_Sequence] = []
        self._running: list[_Sequence] = []
        self._active_lock = threading.Lock()
        self._active = 0
        self._steps = 0
        self.tokens_generated = 0

    # -- event loop side ---------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Sequences accepted and not yet finished (queued, prefilling or decoding)."""
        return self._active

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Render the model's chat template and tokenize; pure Python (no MLX), any thread."""
        text = render_chat(self.tokenizer, messages)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def check_fits(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """Return the max_tokens to use, or raise ContextTooLong (before any model work)."""
        assert self.info is not None
        limit = self.info.context_length
        if prompt_tokens >= limit:
            raise ContextTooLong(
                f"This model's maximum context length is {limit} tokens. However, your messages "
                f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
                param="messages",
            )
        if max_tokens is None:
            return limit - prompt_tokens
        if prompt_tokens + max_tokens > limit:
            raise ContextTooLong(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or "
                "completion.",
                param="max_tokens",
            )
        return max_tokens

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request; its events arrive on the returned stream (on the calling loop)."""
        if not request.prompt_tokens:
            raise InvalidRequest("the prompt is empty", param="messages")
        stream = RequestStream(request.request_id)
        with self._active_lock:
            self._active += 1
        self.post((request, stream))
        return stream

    # -- engine thread -----------------------------------------------------------------------

    def load(self) -> None:
        import mlx.core as mx
        from mlx_lm.utils import load

        model, tokenizer, config = load(str(self.path), return_config=True)  # type: ignore[misc]
        self._model = model
        self.tokenizer = tokenizer
        context = int(
            config.get("max_position_embeddings")
            or getattr(tokenizer, "model_max_length", 0)
            or 4096
        )
        self.info = ModelInfo(
            name=self.name,
            path=str(self.path),
            context_length=context,
            eos_token_ids=frozenset(int(t) for t in tokenizer.eos_token_ids),
            created=int(self.path.stat().st_mtime),
        )
        # Warm up: compile kernels and allocate buffers before the first request is timed.
        from mlx_lm.models.cache import make_prompt_cache

        warm_cache = make_prompt_cache(model)
        mx.eval(model(mx.array([[0, 1]]), cache=warm_cache))
        logger.info("engine %s loaded %s (context %d)", self.name, self.path, context)

    def unload(self) -> None:
        self._model = None

    def handle(self, message: Any) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        request, stream = message
        sequence = _Sequence(
            request=request,
            stream=stream,
            cache=make_prompt_cache(self._model),
            sampler=TokenSampler(request.sampling),
            detokenizer=IncrementalDetokenizer(self.tokenizer),
            stops=StopMatcher(request.stop),
            to_prefill=list(request.prompt_tokens),
        )
        self._prefilling.append(sequence)

    def has_work(self) -> bool:
        return bool(self._prefilling or self._running)

    def fail_all(self, error: Exception) -> None:
        for sequence in self._prefilling + self._running:
            self._finish_with(sequence, ErrorEvent(error))
        self._prefilling.clear()
        self._running.clear()

    def step(self) -> None:
        import mlx.core as mx

        self._drop_cancelled()
        self._prefill_some()
        if not self._running:
            return
        # Schedule every running sequence's next token before reading any back (pipelining).
        scheduled: list[tuple[_Sequence, Any]] = []
        for sequence in self._running:
            upcoming = None
            if sequence.generated + 1 < sequence.request.max_tokens:
                upcoming = self._forward_and_sample(sequence, sequence.next_token)
                mx.async_eval(upcoming)
            scheduled.append((sequence, upcoming))
        finished: list[_Sequence] = []
        for sequence, upcoming in scheduled:
            token = int(sequence.next_token.item())
            sequence.next_token = upcoming
            if self._accept_token(sequence, token):
                finished.append(sequence)
        for sequence in finished:
            self._running.remove(sequence)
        self._steps += 1
        if self._steps % _CLEAR_CACHE_EVERY == 0:
            mx.clear_cache()

    def _forward_and_sample(self, sequence: _Sequence, tokens: Any) -> Any:
        logits = self._model(tokens.reshape(1, -1), cache=sequence.cache)
        return sequence.sampler(logits[:, -1, :])

    def _prefill_some(self) -> None:
        import mlx.core as mx

        budget = self.prefill_chunk
        while self._prefilling and budget > 0:
            sequence = self._prefilling[0]
            # All but the last prompt token only fill the cache; the last one yields logits.
            take = min(budget, len(sequence.to_prefill) - 1)
            if take > 0:
                chunk = mx.array(sequence.to_prefill[:take])
                self._model(chunk[None], cache=sequence.cache)
                mx.eval([c.state for c in sequence.cache])
                del sequence.to_prefill[:take]
                budget -= take
            if len(sequence.to_prefill) == 1 and budget > 0:
                last = mx.array(sequence.to_prefill)
                sequence.to_prefill.clear()
                sequence.next_token = self._forward_and_sample(sequence, last)
                mx.async_eval(sequence.next_token)
                budget -= 1
                self._prefilling.pop(0)
                self._running.append(sequence)

    def _accept_token(self, sequence: _Sequence, token: int) -> bool:
        """Handle one sampled token; True when the sequence has finished."""
        assert self.info is not None
        sequence.generated += 1
        self.tokens_generated += 1
        request = sequence.request
        if token in self.info.eos_token_ids or token in request.stop_token_ids:
            self._finish(sequence, "stop", flush=True)
            return True
        sequence.unsent_token_ids.append(token)
        text, stopped = sequence.stops.feed(sequence.detokenizer.add(token))
        if stopped:
            self._finish(sequence, "stop", text)
            return True
        if sequence.generated >= request.max_tokens:
            self._finish(sequence, "length", text, flush=True)
            return True
        if text:
            sequence.stream.push(TokenEvent(text, sequence.unsent_token_ids))
            sequence.unsent_token_ids = []
        return False

    def _finish(
        self, sequence: _Sequence, reason: FinishReason, text: str = "", flush: bool = False
    ) -> None:
        """End a sequence; `flush` releases held-back text (not after a stop string matched)."""
        if flush:
            tail, _ = sequence.stops.feed(sequence.detokenizer.flush())
            text += tail + sequence.stops.flush()
        if text or sequence.unsent_token_ids:
            sequence.stream.push(TokenEvent(text, sequence.unsent_token_ids))
            sequence.unsent_token_ids = []
        usage = Usage(len(sequence.request.prompt_tokens), sequence.generated)
        self._finish_with(sequence, FinishEvent(reason, usage))

    def _finish_with(self, sequence: _Sequence, event: FinishEvent | ErrorEvent) -> None:
        sequence.cache = []
        with self._active_lock:
            self._active -= 1
        sequence.stream.push(event)  # last: a reader woken by it already sees the new count

    def _drop_cancelled(self) -> None:
        for group in (self._prefilling, self._running):
            for sequence in [s for s in group if s.stream.cancelled]:
                group.remove(sequence)
                usage = Usage(len(sequence.request.prompt_tokens), sequence.generated)
                self._finish_with(sequence, FinishEvent("cancelled", usage))
                logger.info("request %s cancelled", sequence.request.request_id)
