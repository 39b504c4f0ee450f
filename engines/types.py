"""Plain dataclasses that cross between the HTTP edge and the engine threads.

Invariant: nothing here holds an MLX array, a pydantic model or anything bound to a thread; every
value is a plain Python value, so it may be passed between the event loop and an engine thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token. temperature 0 means greedy; top_k 0 and top_p 1 mean no filter."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate: prompt token ids in, text and token ids out."""

    request_id: str
    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class TokenEvent:
    """New output: `text` is whole UTF-8 characters, `token_ids` the tokens that produced it.

    Consecutive TokenEvents may be merged (see `merge`) when the reader is slower than the engine.
    """

    text: str
    token_ids: list[int]

    def merge(self, later: TokenEvent) -> None:
        self.text += later.text
        self.token_ids.extend(later.token_ids)


@dataclass(frozen=True)
class FinishEvent:
    """The sequence ended; it is the last event of a stream (with `text` flushed before it)."""

    reason: FinishReason
    usage: Usage


@dataclass(frozen=True)
class ErrorEvent:
    """The sequence failed after it was accepted; the last event of a stream."""

    error: Exception


Event = TokenEvent | FinishEvent | ErrorEvent
