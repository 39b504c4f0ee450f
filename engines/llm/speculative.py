"""Speculative decoding inside the continuous batch: drafts per row, verified in one pass.

Each decode step, a row that speculates proposes up to k tokens that are likely to follow (the
batch's drafter: `PromptLookup` here, or a smaller model, engines/llm/draft_model.py), the batch
runs the model once over [pending token, drafts...] for every row (rows without drafts are
padded; they take only their first position), and each row keeps the longest
prefix of its drafts the model agrees with, plus one token of the model's own: a step yields
1..k+1 tokens per row. Rejected positions are dropped from that row's cache alone
(`RaggedKVCache.rewind`, or `trim` on a lone row's plain cache).

Lossless:
- temperature 0: a draft is kept only if it is the argmax of the (biased) logits at its
  position, so the tokens are exactly those of decoding one at a time;
- temperature > 0: rejection sampling (Leviathan et al. 2023; Chen et al. 2023). Draft x at a
  position with target distribution p (after temperature, top-k/top-p/min-p, exactly as the
  sampler draws) and draft distribution q is kept with probability min(1, p(x) / q(x)); the
  first rejected position draws from normalise(max(p − q, 0)); if every draft is kept, one more
  token is drawn from the next position's p. A draft model samples x from its own q (its logits
  through the row's own sampler settings) and hands q over with the drafts. Prompt lookup
  proposes deterministically (q is a point mass on x): keep with probability p(x), else draw
  from p without x. Every token is then distributed as p, whatever was drafted
  (tests/engines/test_speculative_sampling.py). The draws are keyed by the row's (seed, step),
  so a seeded request repeats itself.

Rows with a grammar or penalties do not draft (their distribution at a position depends on the
tokens before it through state the sampler updates one token at a time); they still share the
batch. Logprobs, stop strings, stop tokens and max_tokens see the verified tokens one at a time
(`Choice.accept`), so they behave as without speculation.

The draft length adapts per row (`DraftLength`): it grows while every draft is kept and falls to
just past the last kept one after a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import mlx.core as mx

from engines.llm.sampling import Sampled, TokenSampler, top_k_logprobs
from engines.readback import host_list

if TYPE_CHECKING:
    from engines.llm.sequence import Choice

PROMPT_LOOKUP = "prompt_lookup"
DEFAULT_DRAFT_TOKENS = 8


class NgramIndex:
    """Prompt lookup: where each n-gram of a token history (prompt + output) last occurred with
    a token after it, so the tokens that followed it can be proposed when it recurs.

    Invariant: `_last[n][gram]` is the position just after the latest occurrence of `gram`
    that is followed by a token, i.e. < len(history)."""

    def __init__(self, tokens: list[int], max_n: int = 4, min_n: int = 2) -> None:
        self.max_n, self.min_n = max_n, min_n
        self.history: list[int] = []
        self._last: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_n, max_n + 1)}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        history = self.history
        for token in tokens:
            end = len(history)
            for n, last in self._last.items():  # the n-grams ending just before `token`
                if end >= n:
                    last[tuple(history[end - n : end])] = end
            history.append(token)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest suffix."""
        history = self.history
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(history) <= n:
                continue
            start = self._last[n].get(tuple(history[-n:]))
            if start is not None:
                return history[start : start + k]
        return []


@dataclass
class DraftLength:
    """How many tokens a row drafts next: grows by 2 while all are kept, else one past the last
    kept one (at least 1, at most `maximum`)."""

    maximum: int
    current: int = 0

    def __post_init__(self) -> None:
        self.current = self.current or min(4, self.maximum)

    def record(self, drafted: int, accepted: int) -> None:
        if not drafted:
            return
        if accepted == drafted:
            self.current = min(self.maximum, self.current + 2)
        else:
            self.current = max(1, accepted + 1)


@dataclass
class RowSpeculation:
    """One choice's drafting state: its draft length and, for prompt lookup, its n-gram index
    (fed the choice's tokens as they come; None when a draft model drafts)."""

    index: NgramIndex | None
    length: DraftLength
    seen: int = 0  # output tokens already added to the index

    def propose(self, output: list[int], room: int) -> list[int]:
        """Drafts to follow `output` (the choice's tokens so far), at most `room` of them."""
        assert self.index is not None
        self.index.extend(output[self.seen :])
        self.seen = len(output)
        return self.index.propose(min(self.length.current, room))


def draft_room(choice: Choice) -> int:
    """How many tokens `choice` may draft this step: 0 when it does not speculate, cannot have
    several positions verified from one pass (a grammar, penalties), or has at most one token
    left to emit. Its pending token has been emitted, so its tokens end with the one the drafts
    must follow."""
    room = choice.request.max_tokens - choice.generated  # tokens it may still emit
    if choice.speculation is None or room < 2 or not choice.sampler.verifies_drafts:
        return 0
    return min(choice.speculation.length.current, room - 1)


@dataclass
class Drafts:
    """One step's drafts for every row of the batch, in order (no tokens: the row does not
    draft), with the draft model's distribution per drafted position where one sampled them
    (logprobs (drafts, vocab) as the row's sampler filters them; None: a point mass)."""

    tokens: list[list[int]]
    logprobs: list[mx.array | None]

    @classmethod
    def none(cls, rows: int) -> Drafts:
        return cls([[] for _ in range(rows)], [None] * rows)


def record(choices: list[Choice], results: list[RowResult]) -> None:
    """Each drafting row's draft length follows what it just had kept."""
    for choice, result in zip(choices, results, strict=True):
        if choice.speculation is not None:
            choice.speculation.length.record(result.drafted, result.accepted)


class Drafter(Protocol):
    """What a DecodeBatch asks of its drafter; rows are the batch's, in order."""

    def join(self, choices: list[Choice]) -> None:
        """Choices joined the batch (appended as its last rows)."""

    def keep(self, rows: list[int]) -> None:
        """Only `rows` (in order) stay in the batch."""

    def propose(self, choices: list[Choice]) -> Drafts:
        """Every row's drafts for this step (at most `draft_room` each)."""

    def verified(self, choices: list[Choice], results: list[RowResult]) -> None:
        """What the verification of the last proposal kept, per row."""


class PromptLookup:
    """The drafter of `speculative = "prompt_lookup"`: each row proposes from its own n-gram
    index (no model, no state per batch row)."""

    def join(self, choices: list[Choice]) -> None:
        """Nothing to prepare: a choice's index was built from its prompt when it was made."""

    def keep(self, rows: list[int]) -> None:
        """Nothing per row to drop."""

    def propose(self, choices: list[Choice]) -> Drafts:
        tokens = []
        for choice in choices:
            room = draft_room(choice)
            speculation = choice.speculation
            tokens.append(speculation.propose(choice.tokens, room) if speculation and room else [])
        return Drafts(tokens, [None] * len(choices))

    def verified(self, choices: list[Choice], results: list[RowResult]) -> None:
        record(choices, results)


def draft_keys(sampler: TokenSampler, count: int) -> mx.array:
    """Keys for a draft model's `count` draws at the row's current step: apart from the three
    verification keys of the same step (`_prepare`), so drafting and verifying are independent."""
    return mx.random.split(mx.random.split(sampler.key(), 4)[3], count)


@dataclass
class RowResult:
    """What one row's verification decided: the tokens to emit in order (kept drafts, then one
    of the model's own) and, when logprobs were asked, each one's Sampled."""

    tokens: list[int]
    extras: list[Sampled | None] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0


@dataclass
class _Pending:
    """Lazy arrays of one row's verification, read back together with every other row's."""

    sampler: TokenSampler
    drafts: list[int]
    logprobs: mx.array | None = None  # (positions, vocab), when logprobs are asked
    greedy: mx.array | None = None  # (positions,) argmax per position
    kept: mx.array | None = None  # (drafts,) sampling: was draft j kept
    redraw: mx.array | None = None  # (drafts,) sampling: the residual draw at j
    bonus: mx.array | None = None  # (1,) sampling: the draw after the last draft
    sampled: Sampled | None = None  # rows without drafts: their sampler's token


def verify(logits: mx.array, drafts: Drafts, samplers: list[TokenSampler]) -> list[RowResult]:
    """Decide every row of one verification pass (logits: rows × (1 + longest draft) × vocab)."""
    rows = enumerate(zip(drafts.tokens, drafts.logprobs, samplers, strict=True))
    pending = [
        _prepare(logits[i, : 1 + len(d)], d, q, sampler) if d else _plain(logits[i, :1], sampler)
        for i, (d, q, sampler) in rows
    ]
    lazy = [a for p in pending for a in (p.greedy, p.kept, p.redraw, p.bonus) if a is not None]
    lazy += [a for p in pending if p.sampled is not None for a in p.sampled.arrays()]
    mx.eval(*lazy, *(a for s in samplers for a in s.state()))
    return [_decide(p) for p in pending]


def _plain(logits: mx.array, sampler: TokenSampler) -> _Pending:
    return _Pending(sampler, [], sampled=sampler(logits))


def _prepare(
    logits: mx.array, drafts: list[int], q: mx.array | None, sampler: TokenSampler
) -> _Pending:
    """The lazy verification of one row's drafts against its logits (positions × vocab); `q`:
    the draft model's logprobs at the drafted positions (None: the drafts are point masses)."""
    biased = sampler.biased(logits)
    logprobs, filtered = sampler.distribution(biased)
    row = _Pending(sampler, drafts, logprobs if sampler.logprobs is not None else None)
    if sampler.params.greedy:
        row.greedy = mx.argmax(biased, axis=-1)
        return row
    k = len(drafts)
    # top-k/top-p/min-p mask tokens out without renormalising: p must sum to 1 here.
    filtered = filtered - mx.logsumexp(filtered, axis=-1, keepdims=True)
    key_keep, key_redraw, key_bonus, _ = mx.random.split(sampler.key(), 4)  # last: draft_keys
    ids = mx.array(drafts)
    log_p = mx.take_along_axis(filtered[:k], ids[:, None], axis=-1)[:, 0]
    uniform = mx.random.uniform(shape=(k,), key=key_keep)
    if q is None:
        row.kept = uniform < mx.exp(log_p)
        # Draft x is a point mass: the residual max(p - q, 0) is p without x.
        vocab = mx.arange(filtered.shape[-1])[None]
        residual = mx.where(vocab == ids[:, None], -mx.inf, filtered[:k])
    else:
        log_q = mx.take_along_axis(q, ids[:, None], axis=-1)[:, 0]
        row.kept = uniform < mx.exp(log_p - log_q)  # min(1, p/q): u < 1 always
        # log(max(p - q, 0)): -inf where q covers p. Drawn only after a rejection at x, which
        # needs p(x) < q(x), so then some token has p > q and the residual is not empty.
        residual = mx.log(mx.maximum(mx.exp(filtered[:k]) - mx.exp(q), 0.0))
    row.redraw = mx.random.categorical(residual, key=key_redraw)
    row.bonus = mx.random.categorical(filtered[k:], key=key_bonus)
    return row


def _decide(row: _Pending) -> RowResult:
    if row.sampled is not None:
        token = int(host_list(row.sampled.token)[0])
        return RowResult([token], [row.sampled])
    drafts = row.drafts
    if row.greedy is not None:
        targets = host_list(row.greedy)
        kept = next((j for j, d in enumerate(drafts) if targets[j] != d), len(drafts))
        tokens = [*drafts[:kept], int(targets[kept])]
    else:
        assert row.kept is not None and row.redraw is not None and row.bonus is not None
        flags = host_list(row.kept)
        kept = next((j for j, ok in enumerate(flags) if not ok), len(drafts))
        last = host_list(row.redraw)[kept] if kept < len(drafts) else host_list(row.bonus)[0]
        tokens = [*drafts[:kept], int(last)]
    row.sampler.advance(len(tokens))
    extras: list[Sampled | None] = [None] * len(tokens)
    if row.logprobs is not None:
        logprobs = row.logprobs
        extras = [_logprob_of(logprobs[j : j + 1], t, row.sampler) for j, t in enumerate(tokens)]
    return RowResult(tokens, extras, len(drafts), kept)


def _logprob_of(logprobs: mx.array, token: int, sampler: TokenSampler) -> Sampled:
    """The Sampled a one-at-a-time step would have produced for `token` at this position."""
    chosen = mx.array([token])
    sampled = Sampled(chosen, mx.take_along_axis(logprobs, chosen[:, None], axis=-1)[:, 0])
    if sampler.logprobs:
        sampled.top_ids, sampled.top_logprobs = top_k_logprobs(logprobs, sampler.logprobs)
    return sampled
