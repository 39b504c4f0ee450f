"""Per-choice output handling on the engine thread: from sampled token ids to events.

`Choice.accept` turns one token into text (whole UTF-8 characters), applies end-of-sequence,
stop token ids, stop strings, the request's end watch and max_tokens, and pushes TokenEvents;
`Choice.finish` flushes and pushes the FinishEvent. With logprobs, each token's entry is released
only once its text has been sent, so the `text` of a choice's entries always concatenates to the
choice's text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engines.llm.detokenize import IncrementalDetokenizer, StopMatcher, TokenBytes
from engines.llm.sampling import Sampled, TokenSampler
from engines.llm.speculative import RowSpeculation
from engines.readback import host_list, host_scalar
from engines.types import (
    Event,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    TokenEvent,
    TokenLogprob,
    Usage,
)

LOGPROB_FLOOR = -9999.0  # OpenAI's value for "very unlikely"


class EventSink(Protocol):
    """Where a request's events go: a RequestStream (or a list-backed one in unit tests)."""

    @property
    def cancelled(self) -> bool: ...

    def push(self, event: Event) -> None: ...


@dataclass
class Vocabulary:
    """The tokenizer facts a Choice needs (shared by all choices of one engine)."""

    tokenizer: Any
    token_bytes: TokenBytes
    eos_token_ids: frozenset[int]
    hidden_ids: frozenset[int] | None = None  # tokens left out of the text (None: specials)

    def logprob(
        self, token: int, text: str, logprob: float | None, top: tuple[tuple[int, float], ...]
    ) -> TokenLogprob:
        """Alternatives a grammar ruled out (log-probability -inf: fewer allowed tokens than
        asked for) are left out, as impossible; the token's own is finite but for a drawn
        token no distribution allowed, which reads as OpenAI's floor (JSON has no -inf)."""
        alternatives = tuple(
            (t, str(self.tokenizer.decode([t])), lp) for t, lp in top if math.isfinite(lp)
        )
        if logprob is not None and not math.isfinite(logprob):
            logprob = LOGPROB_FLOOR
        return TokenLogprob(token, text, self.token_bytes(token), logprob, alternatives)


@dataclass
class _Entry:
    token: int
    text: str
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass
class Choice:
    """One choice of one request: its sampler, output state and stream."""

    request: GenerationRequest
    stream: EventSink
    index: int
    sampler: TokenSampler
    vocabulary: Vocabulary
    on_finish: Callable[[], None]  # runs just before the FinishEvent is pushed
    cached_tokens: int = 0
    uid: int = 0  # the scheduler's id of the request
    speculation: RowSpeculation | None = None  # its drafter, when this choice speculates
    generated: int = 0
    tokens: list[int] = field(default_factory=list)  # every accepted token, EOS included
    finished: bool = False
    _detokenizer: IncrementalDetokenizer = field(init=False)
    _stops: StopMatcher = field(init=False)
    _unsent_token_ids: list[int] = field(default_factory=list)
    _entries: list[_Entry] = field(default_factory=list)
    _released_chars: int = 0  # characters of _entries[0].text already sent

    def __post_init__(self) -> None:
        self._detokenizer = IncrementalDetokenizer(
            self.vocabulary.tokenizer, hidden=self.vocabulary.hidden_ids
        )
        self._stops = StopMatcher(self.request.stop)
        self._end_watch = self.request.end_watch() if self.request.end_watch else None

    @property
    def limit(self) -> int:
        """Most tokens this choice can hold in a KV cache (prompt + max_tokens)."""
        return len(self.request.prompt_tokens) + self.request.max_tokens

    def accept(self, token: int, sampled: Sampled | None) -> bool:
        """Handle one sampled token; True when the choice has finished (FinishEvent pushed)."""
        self.generated += 1
        self.tokens.append(token)
        if self.speculation is not None:
            self.speculation.emitted()
        request = self.request
        if token in self.vocabulary.eos_token_ids or token in request.stop_token_ids:
            self.finish("stop", "", flush=True)
            return True
        self._unsent_token_ids.append(token)
        delta = self._detokenizer.add(token)
        if request.logprobs is not None and sampled is not None:
            self._entries.append(_Entry(token, delta, *_logprob_values(sampled)))
        text, stopped = self._stops.feed(delta)
        if stopped:
            self.finish("stop", text, flush=False)
            return True
        if self._end_watch is not None and text:
            kept = self._end_watch(text)
            if kept is not None:
                self.finish("stop", text[:kept], flush=False)
                return True
        if self.generated >= request.max_tokens:
            self.finish("length", text, flush=True)
            return True
        if text:
            self._send(text, self._release(len(text)))
        return False

    def finish(self, reason: FinishReason, text: str = "", flush: bool = True) -> None:
        """End the choice; `flush` releases held-back text (not after a stop string matched)."""
        if flush:
            tail = self._detokenizer.flush()
            if tail and self._entries:
                self._entries[-1].text += tail
            more, stopped = self._stops.feed(tail)
            text += more if stopped else more + self._stops.flush()
        logprobs = self._release(len(text))
        if self._entries and self._released_chars:  # a token cut by a stop string
            entry = self._entries[0]
            cut = entry.text[: self._released_chars]
            logprobs.append(self.vocabulary.logprob(entry.token, cut, entry.logprob, entry.top))
        self._entries.clear()
        if text or self._unsent_token_ids or logprobs:
            self._send(text, logprobs)
        self.finished = True
        kept = self.speculation.prediction_kept if self.speculation else 0
        usage = Usage(len(self.request.prompt_tokens), self.generated, self.cached_tokens, kept)
        self.on_finish()  # first, so a reader woken by the event sees the engine's new counts
        matched = self._stops.matched if reason == "stop" else None
        self.stream.push(FinishEvent(reason, usage, self.index, matched))

    def _release(self, sent_chars: int) -> list[TokenLogprob]:
        released: list[TokenLogprob] = []
        available = self._released_chars + sent_chars
        while self._entries and len(self._entries[0].text) <= available:
            entry = self._entries.pop(0)
            available -= len(entry.text)
            released.append(
                self.vocabulary.logprob(entry.token, entry.text, entry.logprob, entry.top)
            )
        self._released_chars = available
        return released

    def _send(self, text: str, logprobs: list[TokenLogprob]) -> None:
        self.stream.push(TokenEvent(text, self._unsent_token_ids, self.index, logprobs))
        self._unsent_token_ids = []


def _logprob_values(sampled: Sampled) -> tuple[float, tuple[tuple[int, float], ...]]:
    assert sampled.logprob is not None
    top: tuple[tuple[int, float], ...] = ()
    if sampled.top_ids is not None and sampled.top_logprobs is not None:
        ids, values = host_list(sampled.top_ids[0]), host_list(sampled.top_logprobs[0])
        top = tuple(zip(ids, values, strict=True))
    return host_scalar(sampled.logprob), top
