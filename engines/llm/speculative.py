"""Speculative decoding inside the continuous batch: drafts per row, verified in one pass.

Each decode step, a row that speculates proposes up to k tokens that are likely to follow (its
drafter), the batch runs the model once over [pending token, drafts...] for every row (rows
without drafts are padded; they take only their first position), and each row keeps the longest
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
  token is drawn from the next position's p. Prompt lookup proposes deterministically (q is a
  point mass on x): keep with probability p(x), else draw from p without x. Every token is then
  distributed as p, whatever was drafted (tests/engines/test_speculative_sampling.py).

Rows with a grammar or penalties do not draft (their distribution at a position depends on the
tokens before it through state the sampler updates one token at a time); they still share the
batch. Logprobs, stop strings, stop tokens and max_tokens see the verified tokens one at a time
(`Choice.accept`), so they behave as without speculation.

The draft length adapts per row (`DraftLength`): it grows while every draft is kept and falls to
just past the last kept one after a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx

from engines.llm.sampling import Sampled, TokenSampler, top_k_logprobs
from engines.readback import host_list

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
    """One choice's drafter state: its n-gram index (fed the choice's tokens as they come)."""

    index: NgramIndex
    length: DraftLength
    seen: int = 0  # output tokens already added to the index

    def propose(self, output: list[int], room: int) -> list[int]:
        """Drafts to follow `output` (the choice's tokens so far), at most `room` of them."""
        self.index.extend(output[self.seen :])
        self.seen = len(output)
        return self.index.propose(min(self.length.current, room))


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


def verify(
    logits: mx.array, drafts: list[list[int]], samplers: list[TokenSampler]
) -> list[RowResult]:
    """Decide every row of one verification pass (logits: rows × (1 + longest draft) × vocab)."""
    pending = [
        _prepare(logits[row, : 1 + len(d)], d, sampler) if d else _plain(logits[row, :1], sampler)
        for row, (d, sampler) in enumerate(zip(drafts, samplers, strict=True))
    ]
    lazy = [a for p in pending for a in (p.greedy, p.kept, p.redraw, p.bonus) if a is not None]
    lazy += [a for p in pending if p.sampled is not None for a in p.sampled.arrays()]
    mx.eval(*lazy, *(a for s in samplers for a in s.state()))
    return [_decide(p) for p in pending]


def _plain(logits: mx.array, sampler: TokenSampler) -> _Pending:
    return _Pending(sampler, [], sampled=sampler(logits))


def _prepare(logits: mx.array, drafts: list[int], sampler: TokenSampler) -> _Pending:
    """The lazy verification of one row's drafts against its logits (positions × vocab)."""
    biased = sampler.biased(logits)
    logprobs, filtered = sampler.distribution(biased)
    row = _Pending(sampler, drafts, logprobs if sampler.logprobs is not None else None)
    if sampler.params.greedy:
        row.greedy = mx.argmax(biased, axis=-1)
        return row
    k = len(drafts)
    # top-k/top-p/min-p mask tokens out without renormalising: p must sum to 1 here.
    filtered = filtered - mx.logsumexp(filtered, axis=-1, keepdims=True)
    key_keep, key_redraw, key_bonus = mx.random.split(sampler.key(), 3)
    ids = mx.array(drafts)
    p_draft = mx.exp(mx.take_along_axis(filtered[:k], ids[:, None], axis=-1)[:, 0])
    row.kept = mx.random.uniform(shape=(k,), key=key_keep) < p_draft
    # Draft x is a point mass: the residual max(p - q, 0) is p without x.
    residual = mx.where(mx.arange(filtered.shape[-1])[None] == ids[:, None], -mx.inf, filtered[:k])
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
