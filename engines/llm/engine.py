"""LLMEngine: serves one mlx-lm model from its engine thread.

Step loop (one call of `step`):
1. Sequences whose client went away leave at once (their RequestStream was cancelled).
2. Prefill: prompt tokens are fed in chunks, at most `prefill_chunk` tokens per step across all
   prefilling requests, so a long prompt delays running streams by at most one chunk per step.
   A request with n > 1 is prefilled once; its n choices then fork the prompt's KV cache.
3. Decode: for every running sequence, the next token is scheduled (lazily, `mx.async_eval`) before
   the previous one is read back, so the device works while the host detokenizes.

Invariants: all MLX work happens on the engine thread; only plain values reach RequestStreams;
each choice's events end with exactly one FinishEvent, or the request's with an ErrorEvent.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.bridge import RequestStream
from engines.errors import ContextTooLong, InvalidRequest
from engines.llm.detokenize import IncrementalDetokenizer, StopMatcher, TokenBytes
from engines.llm.sampling import (
    Sampled,
    TokenSampler,
    choice_seed,
    host_list,
    host_scalar,
    top_k_logprobs,
)
from engines.llm.templates import render_chat
from engines.types import (
    ErrorEvent,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    PromptEvent,
    TokenEvent,
    TokenLogprob,
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
    fim_tokens: tuple[str, str, str] | None = (
        None  # (prefix, suffix, middle) when the vocab has them
    )


FIM_TOKEN_SETS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, StarCoder2
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder
    ("<PRE>", "<SUF>", "<MID>"),  # CodeLlama
)


@dataclass
class _Entry:
    """An output token waiting for its text to be released (only kept when logprobs are asked)."""

    token: int
    text: str
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass
class _Prefill:
    request: GenerationRequest
    stream: RequestStream
    cache: list[Any]
    sampler: TokenSampler
    to_prefill: list[int]
    prompt_scores: list[tuple[float, tuple[tuple[int, float], ...]]] = field(default_factory=list)


@dataclass
class _Sequence:
    request: GenerationRequest
    stream: RequestStream
    index: int
    cache: list[Any]
    sampler: TokenSampler
    detokenizer: IncrementalDetokenizer
    stops: StopMatcher
    next: Sampled | None = None  # scheduled for the next read
    generated: int = 0
    unsent_token_ids: list[int] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list)
    released_chars: int = 0  # characters of entries[0].text already sent


class LLMEngine(EngineThread):
    """One model, one thread. `submit` and the properties are called from the event loop."""

    def __init__(self, name: str, path: Path, prefill_chunk: int = 512) -> None:
        super().__init__(name)
        self.path = path
        self.prefill_chunk = prefill_chunk
        self.info: ModelInfo | None = None
        self.tokenizer: Any = None
        self.vocab_size = 0
        self._model: Any = None
        self._token_bytes: TokenBytes | None = None
        self._prefilling: list[_Prefill] = []
        self._running: list[_Sequence] = []
        self._active_lock = threading.Lock()
        self._active = 0
        self._steps = 0
        self.tokens_generated = 0

    # -- event loop side ---------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Choices accepted and not yet finished (queued, prefilling or decoding)."""
        return self._active

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Render the model's chat template and tokenize; pure Python (no MLX), any thread."""
        text = render_chat(self.tokenizer, messages)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_text(self, text: str) -> list[int]:
        """Tokenize a raw prompt as the model expects it (BOS added if the model wants one)."""
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def encode_fim(self, prefix: str, suffix: str) -> list[int]:
        """A fill-in-the-middle prompt, or InvalidRequest if the model has no FIM tokens."""
        assert self.info is not None
        if self.info.fim_tokens is None:
            raise InvalidRequest(
                f"model '{self.name}' has no fill-in-the-middle tokens, so 'suffix' cannot be used",
                param="suffix",
            )
        pre, suf, mid = self.info.fim_tokens
        return list(
            self.tokenizer.encode(f"{pre}{prefix}{suf}{suffix}{mid}", add_special_tokens=False)
        )

    def decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens))

    def check_fits(
        self, prompt_tokens: int, max_tokens: int | None, param: str = "messages"
    ) -> int:
        """Return the max_tokens to use, or raise ContextTooLong (before any model work)."""
        assert self.info is not None
        limit = self.info.context_length
        if prompt_tokens >= limit:
            raise ContextTooLong(
                f"This model's maximum context length is {limit} tokens. However, your {param} "
                f"resulted in {prompt_tokens} tokens. Please reduce the length of the {param}.",
                param=param,
            )
        if max_tokens is None:
            return limit - prompt_tokens
        if prompt_tokens + max_tokens > limit:
            raise ContextTooLong(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, "
                f"{max_tokens} in the completion). Please reduce the length of the {param} or "
                "completion.",
                param="max_tokens",
            )
        return max_tokens

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request; its events arrive on the returned stream (on the calling loop)."""
        if not request.prompt_tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        bad = [t for t, _ in request.sampling.logit_bias if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequest(
                f"logit_bias names token ids outside the vocabulary (0..{self.vocab_size - 1}): "
                f"{bad[:5]}",
                param="logit_bias",
            )
        stream = RequestStream(request.request_id, choices=request.n)
        with self._active_lock:
            self._active += request.n
        self.post((request, stream))
        return stream

    # -- engine thread -----------------------------------------------------------------------

    def load(self) -> None:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.utils import load

        model, tokenizer, config = load(str(self.path), return_config=True)  # type: ignore[misc]
        self._model = model
        self.tokenizer = tokenizer
        self._token_bytes = TokenBytes(tokenizer)
        self.vocab_size = int(config.get("vocab_size") or len(tokenizer.vocab))
        context = int(
            config.get("max_position_embeddings")
            or getattr(tokenizer, "model_max_length", 0)
            or 4096
        )
        vocab = tokenizer.vocab
        fim = next((s for s in FIM_TOKEN_SETS if all(t in vocab for t in s)), None)
        self.info = ModelInfo(
            name=self.name,
            path=str(self.path),
            context_length=context,
            eos_token_ids=frozenset(int(t) for t in tokenizer.eos_token_ids),
            created=int(self.path.stat().st_mtime),
            fim_tokens=fim,
        )
        # Warm up: compile kernels and allocate buffers before the first request is timed.
        warm_cache = make_prompt_cache(model)
        mx.eval(model(mx.array([[0, 1]]), cache=warm_cache))
        logger.info("engine %s loaded %s (context %d)", self.name, self.path, context)

    def unload(self) -> None:
        self._model = None

    def handle(self, message: Any) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        request, stream = message
        sampler = TokenSampler(
            request.sampling,
            choice_seed(request.sampling.seed, 0),
            self.vocab_size,
            request.prompt_tokens,
            request.logprobs,
        )
        self._prefilling.append(
            _Prefill(
                request,
                stream,
                make_prompt_cache(self._model),
                sampler,
                list(request.prompt_tokens),
            )
        )

    def has_work(self) -> bool:
        return bool(self._prefilling or self._running)

    def fail_all(self, error: Exception) -> None:
        for prefill in self._prefilling:
            self._release(prefill.request.n)
            prefill.stream.push(ErrorEvent(error))
        for sequence in self._running:
            self._release(1)
            sequence.stream.push(ErrorEvent(error))
        self._prefilling.clear()
        self._running.clear()

    def step(self) -> None:
        import mlx.core as mx

        self._drop_cancelled()
        self._prefill_some()
        if not self._running:
            return
        # Schedule every running sequence's next token before reading any back (pipelining).
        scheduled: list[tuple[_Sequence, Sampled | None]] = []
        for sequence in self._running:
            upcoming = None
            if sequence.generated + 1 < sequence.request.max_tokens:
                assert sequence.next is not None
                upcoming = self._forward_and_sample(
                    sequence.cache, sequence.sampler, sequence.next.token
                )
                mx.async_eval(upcoming.arrays() + sequence.sampler.state())
            scheduled.append((sequence, upcoming))
        finished: list[_Sequence] = []
        for sequence, upcoming in scheduled:
            current, sequence.next = sequence.next, upcoming
            assert current is not None
            if self._accept(sequence, current):
                finished.append(sequence)
        for sequence in finished:
            self._running.remove(sequence)
        self._steps += 1
        if self._steps % _CLEAR_CACHE_EVERY == 0:
            mx.clear_cache()

    def _forward_and_sample(self, cache: list[Any], sampler: TokenSampler, tokens: Any) -> Sampled:
        logits = self._model(tokens.reshape(1, -1), cache=cache)
        return sampler(logits[:, -1, :])

    def _prefill_some(self) -> None:
        import mlx.core as mx

        budget = self.prefill_chunk
        while self._prefilling and budget > 0:
            prefill = self._prefilling[0]
            # All but the last prompt token only fill the cache; the last one yields logits.
            take = min(budget, len(prefill.to_prefill) - 1)
            if take > 0:
                chunk = mx.array(prefill.to_prefill[:take])
                logits = self._model(chunk[None], cache=prefill.cache)
                if prefill.request.prompt_logprobs:
                    self._score_prompt(prefill, logits[0], prefill.to_prefill[1 : take + 1])
                mx.eval([c.state for c in prefill.cache])
                del prefill.to_prefill[:take]
                budget -= take
            if len(prefill.to_prefill) == 1 and budget > 0:
                budget -= 1
                self._prefilling.pop(0)
                self._start_choices(prefill)

    def _score_prompt(self, prefill: _Prefill, logits: Any, targets: list[int]) -> None:
        """Logprobs of the prompt's tokens given what precedes them (completions' echo)."""
        import mlx.core as mx

        logprobs = logits.astype(mx.float32)
        logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
        chosen = mx.take_along_axis(logprobs, mx.array(targets)[:, None], axis=-1)[:, 0]
        k = prefill.request.logprobs or 0
        if k > 0:
            top_ids, top_values = top_k_logprobs(logprobs, k)
            ids, values = host_list(top_ids), host_list(top_values)
        else:
            ids, values = [[] for _ in targets], [[] for _ in targets]
        for logprob, row_ids, row_values in zip(host_list(chosen), ids, values, strict=True):
            prefill.prompt_scores.append((logprob, tuple(zip(row_ids, row_values, strict=True))))

    def _start_choices(self, prefill: _Prefill) -> None:
        """Run the last prompt token, then fork the cache and sampler into n choices."""
        import mlx.core as mx

        request = prefill.request
        if request.prompt_logprobs:
            prefill.stream.push(PromptEvent(self._prompt_logprobs(prefill)))
        if request.max_tokens == 0:  # scoring only (completions' echo with max_tokens 0)
            usage = Usage(len(request.prompt_tokens), 0)
            self._release(request.n)
            for index in range(request.n):
                prefill.stream.push(FinishEvent("length", usage, index))
            return
        last = mx.array(prefill.to_prefill)
        logits = self._model(last[None], cache=prefill.cache)[:, -1, :]
        if request.n > 1:
            mx.eval(logits, [c.state for c in prefill.cache])
        for index in range(request.n):
            if index == 0:
                cache, sampler = prefill.cache, prefill.sampler
            else:
                cache = copy.deepcopy(prefill.cache)
                sampler = prefill.sampler.fork(choice_seed(request.sampling.seed, index))
            sequence = _Sequence(
                request=request,
                stream=prefill.stream,
                index=index,
                cache=cache,
                sampler=sampler,
                detokenizer=IncrementalDetokenizer(self.tokenizer),
                stops=StopMatcher(request.stop),
            )
            sequence.next = sampler(logits)
            mx.async_eval(sequence.next.arrays() + sampler.state())
            self._running.append(sequence)

    def _prompt_logprobs(self, prefill: _Prefill) -> list[TokenLogprob]:
        tokens = prefill.request.prompt_tokens
        detokenizer = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=False)
        texts = [detokenizer.add(t) for t in tokens]
        texts[-1] += detokenizer.flush()
        scores: list[tuple[float | None, tuple[tuple[int, float], ...]]] = [(None, ())]
        scores += prefill.prompt_scores
        return [
            self._token_logprob(token, text, logprob, top)
            for token, text, (logprob, top) in zip(tokens, texts, scores, strict=True)
        ]

    def _token_logprob(
        self, token: int, text: str, logprob: float | None, top: tuple[tuple[int, float], ...]
    ) -> TokenLogprob:
        assert self._token_bytes is not None
        alternatives = tuple((t, self.decode([t]), lp) for t, lp in top)
        return TokenLogprob(token, text, self._token_bytes(token), logprob, alternatives)

    def _accept(self, sequence: _Sequence, sampled: Sampled) -> bool:
        """Handle one sampled token; True when the sequence has finished."""
        assert self.info is not None
        token = int(host_scalar(sampled.token))
        sequence.generated += 1
        self.tokens_generated += 1
        request = sequence.request
        if token in self.info.eos_token_ids or token in request.stop_token_ids:
            self._finish(sequence, "stop", "", flush=True)
            return True
        sequence.unsent_token_ids.append(token)
        delta = sequence.detokenizer.add(token)
        if request.logprobs is not None:
            assert sampled.logprob is not None
            top: tuple[tuple[int, float], ...] = ()
            if sampled.top_ids is not None and sampled.top_logprobs is not None:
                top = tuple(
                    zip(
                        host_list(sampled.top_ids[0]),
                        host_list(sampled.top_logprobs[0]),
                        strict=True,
                    )
                )
            sequence.entries.append(_Entry(token, delta, host_scalar(sampled.logprob), top))
        text, stopped = sequence.stops.feed(delta)
        if stopped:
            self._finish(sequence, "stop", text, flush=False)
            return True
        if sequence.generated >= request.max_tokens:
            self._finish(sequence, "length", text, flush=True)
            return True
        if text:
            self._send(sequence, text, self._release_entries(sequence, len(text)))
        return False

    def _release_entries(self, sequence: _Sequence, sent_chars: int) -> list[TokenLogprob]:
        """Entries whose whole text has now been sent (keeps token texts aligned with the text)."""
        released: list[TokenLogprob] = []
        available = sequence.released_chars + sent_chars
        while sequence.entries and len(sequence.entries[0].text) <= available:
            entry = sequence.entries.pop(0)
            available -= len(entry.text)
            released.append(self._token_logprob(entry.token, entry.text, entry.logprob, entry.top))
        sequence.released_chars = available
        return released

    def _send(self, sequence: _Sequence, text: str, logprobs: list[TokenLogprob]) -> None:
        event = TokenEvent(text, sequence.unsent_token_ids, sequence.index, logprobs)
        sequence.stream.push(event)
        sequence.unsent_token_ids = []

    def _finish(self, sequence: _Sequence, reason: FinishReason, text: str, flush: bool) -> None:
        """End a sequence; `flush` releases held-back text (not after a stop string matched)."""
        if flush:
            tail = sequence.detokenizer.flush()
            if tail and sequence.entries:
                sequence.entries[-1].text += tail
            more, stopped = sequence.stops.feed(tail)
            text += more if stopped else more + sequence.stops.flush()
        logprobs = self._release_entries(sequence, len(text))
        if sequence.entries and sequence.released_chars:  # a token cut by a stop string
            entry = sequence.entries[0]
            cut = entry.text[: sequence.released_chars]
            logprobs.append(self._token_logprob(entry.token, cut, entry.logprob, entry.top))
        sequence.entries.clear()
        if text or sequence.unsent_token_ids or logprobs:
            self._send(sequence, text, logprobs)
        usage = Usage(len(sequence.request.prompt_tokens), sequence.generated)
        sequence.cache = []
        self._release(1)
        sequence.stream.push(FinishEvent(reason, usage, sequence.index))  # after the count drops

    def _release(self, choices: int) -> None:
        with self._active_lock:
            self._active -= choices

    def _drop_cancelled(self) -> None:
        for prefill in [p for p in self._prefilling if p.stream.cancelled]:
            self._prefilling.remove(prefill)
            self._release(prefill.request.n)
            usage = Usage(len(prefill.request.prompt_tokens), 0)
            for index in range(prefill.request.n):
                prefill.stream.push(FinishEvent("cancelled", usage, index))
            logger.info("request %s cancelled", prefill.request.request_id)
        for sequence in [s for s in self._running if s.stream.cancelled]:
            self._running.remove(sequence)
            self._release(1)
            usage = Usage(len(sequence.request.prompt_tokens), sequence.generated)
            sequence.stream.push(FinishEvent("cancelled", usage, sequence.index))
            logger.info(
                "request %s choice %d cancelled", sequence.request.request_id, sequence.index
            )
