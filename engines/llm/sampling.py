"""Per-sequence token sampling on the engine thread.

Order of operations (documented in docs/api.md):
logits → grammar mask (structured outputs, forced tool calls) → logit_bias → repetition penalty
→ presence/frequency penalties → temperature
→ [logprobs are taken here] → top-k → top-p → min-p → draw.
temperature 0 is greedy (argmax of the processed logits), whatever the other settings; logprobs of
a greedy request are the log-softmax of the processed logits at temperature 1.

Everything is lazy MLX work that depends only on earlier steps' lazy tokens, so the engine can
schedule step n+1 before reading token n back (pipelining) — except for a constrained sequence,
whose grammar must see token n on the host before it can mask step n+1 (that row reads its
token back first; the batch waits for it). Penalty state (token counts, recent
tokens) is carried as MLX arrays updated with each sampled token.

Each sequence draws from its own random stream: the key for step n is derived on the host from
(seed, n), so a seeded request gives the same tokens whatever else the engine is running.

`agree` (None but in a distributed engine: engines/llm/distributed.py) maps each drawn token to
the one every rank goes on with (rank 0's, through a collective): penalty and grammar state
advance with that token, never with this rank's own draw.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from engines.llm.constrain import Constraint
from engines.readback import host_scalar
from engines.types import REPETITION_WINDOW, SamplingParams

_MASK64 = (1 << 64) - 1
SMALLEST_TOP_P = 1e-30  # a normal float32: top_p × the total mass stays above 0


def mix64(value: int) -> int:
    """splitmix64 finaliser: spreads (seed, step) pairs over the whole 64-bit key space."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def choice_seed(seed: int | None, index: int) -> int:
    """The seed of choice `index` of a request (choice 0 keeps the request's own seed)."""
    if seed is None:
        return secrets.randbits(63)
    return seed if index == 0 else mix64(seed ^ (index << 32)) >> 1


@dataclass
class Sampled:
    """Lazy results of one step: the token, and (when asked) logprob data."""

    token: mx.array  # shape (1,)
    logprob: mx.array | None = None  # shape (1,)
    top_ids: mx.array | None = None  # shape (1, k), most likely first
    top_logprobs: mx.array | None = None

    def arrays(self) -> list[mx.array]:
        return [
            a for a in (self.token, self.logprob, self.top_ids, self.top_logprobs) if a is not None
        ]


class TokenSampler:
    """Turns the last position's logits (shape (1, vocab)) into the next token."""

    # Distributed: a drawn token -> the token every rank keeps (rank 0's); forks share it.
    agree: Callable[[mx.array], mx.array] | None = None

    def __init__(
        self,
        params: SamplingParams,
        seed: int,
        vocab_size: int,
        prompt_tokens: list[int],
        logprobs: int | None = None,
        constraint: Constraint | None = None,
    ) -> None:
        self.params = params
        self.constraint = constraint
        self._unconsumed: mx.array | None = None  # last token, not yet fed to the grammar
        self.seed = seed
        self.logprobs = logprobs
        self._step = 0
        self._bias: mx.array | None = None
        if params.logit_bias:
            ids, values = zip(*params.logit_bias, strict=True)
            bias = mx.zeros((vocab_size,), dtype=mx.float32)
            self._bias = bias.at[mx.array(ids)].add(mx.array(values, dtype=mx.float32))
        self._counts: mx.array | None = None
        if params.presence_penalty or params.frequency_penalty:
            self._counts = mx.zeros((vocab_size,), dtype=mx.float32)
        self._recent: mx.array | None = None
        if params.repetition_penalty != 1.0:
            window = prompt_tokens[-REPETITION_WINDOW:] or [0]
            self._recent = mx.array(window, dtype=mx.int32)

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing else to compute: rows like this are sampled as one batch argmax."""
        return (
            self.params.greedy
            and self._bias is None
            and self._counts is None
            and self._recent is None
            and self.logprobs is None
            and self.constraint is None
        )

    def state(self) -> list[mx.array]:
        """Lazy state arrays to evaluate together with each step's token."""
        return [a for a in (self._counts, self._recent) if a is not None]

    def fork(self, seed: int) -> TokenSampler:
        """A sampler with the same parameters and penalty state but its own random stream."""
        twin = TokenSampler.__new__(TokenSampler)
        twin.__dict__.update(self.__dict__)
        twin.seed = seed
        if self.constraint is not None:
            twin.constraint = self.constraint.fork()
        return twin

    def __call__(self, logits: mx.array) -> Sampled:
        params = self.params
        logits = logits.astype(mx.float32)
        if self.constraint is not None:
            if self._unconsumed is not None:
                self.constraint.consume(int(host_scalar(self._unconsumed)))
            logits = mx.where(mx.array(self.constraint.allowed())[None], logits, -mx.inf)
        if self._bias is not None:
            logits = logits + self._bias
        if self._recent is not None:
            logits = self._apply_repetition(logits, self._recent)
        if self._counts is not None:
            presence = (self._counts > 0).astype(mx.float32) * params.presence_penalty
            logits = logits - presence - self._counts * params.frequency_penalty
        logprobs, filtered = self.distribution(logits)
        if params.greedy:
            token = mx.argmax(logits, axis=-1)
        else:
            token = mx.random.categorical(filtered, key=self.key())
        if self.agree is not None:
            token = self.agree(token)
        self._step += 1
        self._observe(token)
        if self.constraint is not None:
            self._unconsumed = token
        sampled = Sampled(token)
        if self.logprobs is not None:
            sampled.logprob = mx.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
            if self.logprobs > 0:
                sampled.top_ids, sampled.top_logprobs = top_k_logprobs(logprobs, self.logprobs)
        return sampled

    def distribution(self, logits: mx.array) -> tuple[mx.array, mx.array]:
        """The stateless tail of sampling, for logits (rows, vocab) already masked and penalised:
        (logprobs after temperature — what logprobs report —, the filtered logprobs a token is
        drawn from: top-k, top-p, min-p). Greedy: temperature 1 and no filtering."""
        params = self.params
        if not params.greedy:
            logits = logits * (1.0 / params.temperature)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        filtered = logprobs
        if params.greedy:
            return logprobs, filtered
        if 0 < params.top_k < filtered.shape[-1]:
            filtered = apply_top_k(filtered, params.top_k)
        if 0.0 < params.top_p < 1.0:
            # float32 reads a top_p below ~1e-45 as 0, and mlx-lm's filter then drops every
            # token; the smallest top_p it keeps the likeliest token with is what was asked.
            filtered = apply_top_p(filtered, max(params.top_p, SMALLEST_TOP_P))
        if params.min_p > 0.0:
            filtered = apply_min_p(filtered, params.min_p)
        return logprobs, filtered

    @property
    def verifies_drafts(self) -> bool:
        """No grammar and no penalty state: the distribution at a position depends only on that
        position's logits, so several drafted positions can be verified from one pass."""
        return self.constraint is None and self._counts is None and self._recent is None

    def biased(self, logits: mx.array) -> mx.array:
        """Logits (rows, vocab) as float32 with logit_bias added (stateless, as in `__call__`)."""
        logits = logits.astype(mx.float32)
        return logits + self._bias if self._bias is not None else logits

    def key(self) -> mx.array:
        """This step's random key: a function of (seed, step) only."""
        return mx.random.key(mix64((self.seed << 20) ^ self._step) >> 1)

    def advance(self, tokens: int) -> None:
        """Count `tokens` tokens decided outside `__call__` (kept drafts and their successor)."""
        self._step += tokens

    def _observe(self, token: mx.array) -> None:
        if self._counts is not None:
            self._counts = self._counts.at[token].add(1.0)
        if self._recent is not None:
            self._recent = mx.concatenate([self._recent, token.astype(mx.int32)])[
                -REPETITION_WINDOW:
            ]

    def _apply_repetition(self, logits: mx.array, recent: mx.array) -> mx.array:
        penalty = self.params.repetition_penalty
        selected = logits[:, recent]
        adjusted = mx.where(selected > 0, selected / penalty, selected * penalty)
        logits[:, recent] = adjusted
        return logits


def top_k_logprobs(logprobs: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """The k most likely tokens of each row, most likely first: (ids, logprobs)."""
    k = min(k, logprobs.shape[-1])
    ids = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[..., :k]
    values = mx.take_along_axis(logprobs, ids, axis=-1)
    order = mx.argsort(-values, axis=-1)
    return mx.take_along_axis(ids, order, axis=-1), mx.take_along_axis(values, order, axis=-1)
