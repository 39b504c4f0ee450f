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

How many tokens are drafted adapts twice. Per row (`DraftLength`): the length grows while every
draft is kept and falls to just past the last kept one after a rejection, and the row keeps an
estimate of how likely each next draft is to be kept. Per pass (`best_width`): every row is
padded to the longest draft, so the batch drafts only as far as the expected extra tokens pay for
the wider pass, priced by `PassCost`, a line fitted to this engine's own pass times (on a GPU a
pass of 8 positions costs about what one does; on a CPU, or with many rows, each position costs
more); where nothing pays, the step is a plain one.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import mlx.core as mx

from engines.llm.sampling import Sampled, TokenSampler, top_k_logprobs
from engines.readback import host_list

if TYPE_CHECKING:
    from engines.llm.sequence import Choice

PROMPT_LOOKUP = "prompt_lookup"
DEFAULT_DRAFT_TOKENS = 16


class NgramIndex:
    """Prompt lookup: where each n-gram of a token history (prompt + output) last occurred with
    a token after it, so the tokens that followed it can be proposed when it recurs. The longest
    recurring suffix (up to `max_n` tokens) wins: the more context matches, the likelier the
    text is being copied from there.

    A `prediction` (OpenAI's Predicted Outputs: the client's guess at the whole output, e.g. the
    file being edited) is indexed apart, read as what follows the prompt's last tokens; at each
    n-gram length it is looked up before the history, at the occurrence where the output would
    be now had it followed the prediction since the last proposal from it that had a draft kept
    (else the nearest after that: the output left out some of it; else the nearest after that
    proposal's start: it added text of its own), never before, so repeated lines are followed in
    order and a prediction used up proposes nothing more. Only a proposal with a draft kept
    (`kept`) moves that anchor: a chance match (an n-gram of the reply's opening words that
    the prediction also holds further on) would otherwise move it past where the output
    meets the prediction, and everything before would be lost. With `copy_history` off (a draft
    model drafts the rest) only the prediction is looked up.

    Invariant: `_last[n][hash(gram)]` is the position just after the latest occurrence of an
    n-gram with that hash that is followed by a token, i.e. < len(history). Keys are hashes (a
    machine word instead of a tuple per n-gram and n: a long agent prompt is indexed once per
    n); two n-grams sharing a hash only cost a rejected draft."""

    def __init__(
        self,
        tokens: list[int],
        max_n: int = 8,
        min_n: int = 2,
        prediction: Sequence[int] = (),
        copy_history: bool = True,
    ) -> None:
        self.max_n, self.min_n = max_n, min_n
        self.history: list[int] = []
        lengths = range(min_n, max_n + 1)
        self._last: dict[int, dict[int, int]] = {n: {} for n in lengths if copy_history}
        self.extend(tokens)
        # The prediction after the prompt's last tokens (so the output's start finds it), and
        # for each n-gram of that every position just after it, ascending.
        self._predicted = [*tokens[-max_n:], *prediction] if prediction else []
        self._predicted_at: dict[int, dict[int, list[int]]] = {n: {} for n in lengths}
        for end in range(min_n, len(self._predicted)):
            for n, at in self._predicted_at.items():
                if end >= n:
                    at.setdefault(hash(tuple(self._predicted[end - n : end])), []).append(end)
        # Where in the prediction the last proposal from it with a draft kept began, and the
        # history's length then; the same for the last proposal from it.
        self._anchor = self._proposed = (0, len(self.history))
        # Prediction positions below this were counted as kept (the prompt's tail is none).
        self._counted = len(self._predicted) - len(prediction)
        self.from_prediction = False  # whether the last proposal came from the prediction

    def fork(self) -> NgramIndex:
        """A copy that goes its own way (another choice of the same request): built once per
        request, not once per choice (n up to 128 of a long prompt and prediction would stall
        the engine thread that long). The prediction's index, never changed once built, is
        shared."""
        twin = copy.copy(self)
        twin.history = list(self.history)
        twin._last = {n: dict(last) for n, last in self._last.items()}
        return twin

    def extend(self, tokens: list[int]) -> None:
        history = self.history
        for token in tokens:
            end = len(history)
            for n, last in self._last.items():  # the n-grams ending just before `token`
                if end >= n:
                    last[hash(tuple(history[end - n : end]))] = end
            history.append(token)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed an earlier occurrence of the longest suffix: in the
        prediction, else the latest in the history."""
        history = self.history
        self.from_prediction = False
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(history) < n:
                continue
            key = hash(tuple(history[-n:]))
            # Most rows have no prediction: no lookups for one (this runs every step per row).
            ends = self._predicted_at[n].get(key) if self._predicted else None
            begin = self._in_prediction(ends) if ends else None
            if begin is not None:
                self._proposed, self.from_prediction = (begin, len(history)), True
                return self._predicted[begin : begin + k]
            start = self._last[n].get(key) if n in self._last and len(history) > n else None
            if start is not None:
                return history[start : start + k]
        return []

    def kept(self, accepted: int) -> int:
        """The last proposal came from the prediction and its first `accepted` drafts were kept:
        the prediction's tokens that were not counted as kept before (each once, however often a
        looping output meets it again: at most the prediction's length in all). A kept
        proposal never begins before the last kept one (the anchor), so the kept positions below
        the mark `_counted` are all counted and those past it are new."""
        if not accepted:
            return 0
        self._anchor = self._proposed
        begin = self._proposed[0]
        end = begin + accepted
        new = max(0, end - max(begin, self._counted))
        self._counted = max(self._counted, end)
        return new

    def _in_prediction(self, ends: list[int]) -> int | None:
        """Of the positions just after a matched n-gram in the prediction (ascending), the one
        to propose from (None: none of them)."""
        start, length = self._anchor
        for bound in (start + len(self.history) - length, start):
            after = bisect.bisect_left(ends, bound)
            if after < len(ends):
                return ends[after]
        return None


# DraftLength's acceptance estimate: counts decay by KEEP_DECAY per verification (recent steps
# weigh most) and by IDLE_DECAY per step without drafts, so a row that stopped drafting drifts
# back towards the prior (1/2) and is tried again.
KEEP_DECAY = 0.9
IDLE_DECAY = 0.97


@dataclass
class DraftLength:
    """How many tokens a row drafts next: doubles while all are kept, else one past the last
    kept one (at least 1, at most `maximum`); and how likely its next draft is to be kept
    (`acceptance`: kept drafts over kept + rejections, decayed, from a prior of 1/2)."""

    maximum: int
    current: int = 0
    kept: float = 0.0
    missed: float = 0.0

    def __post_init__(self) -> None:
        self.current = self.current or min(4, self.maximum)

    @property
    def acceptance(self) -> float:
        return (self.kept + 1) / (self.kept + self.missed + 2)

    def record(self, drafted: int, accepted: int) -> None:
        if not drafted:
            self.kept *= IDLE_DECAY
            self.missed *= IDLE_DECAY
            return
        self.kept = KEEP_DECAY * self.kept + accepted
        self.missed = KEEP_DECAY * self.missed + (accepted < drafted)
        if accepted == drafted:
            self.current = min(self.maximum, 2 * self.current)
        else:
            self.current = max(1, accepted + 1)


class PassCost:
    """Seconds per decode pass as a line in the positions it computes (rows x width): `base` +
    `per_position` x positions, fitted by least squares with exponential forgetting to the
    passes this engine timed. Before two different sizes were timed nothing is known and
    `relative` is flat (drafting looks free, as it is on a launch-bound GPU). The first pass of
    each size is not counted: it pays what later ones do not (buffers of a new shape allocated;
    on CUDA, kernels planned), and one such slow wide pass made drafting look dear, so the
    engine stopped drafting, timed no wide pass again and stayed there until the fit forgot it."""

    DECAY = 0.98

    def __init__(self) -> None:
        self._n = self._p = self._t = self._pp = self._pt = 0.0
        self._sizes: set[int] = set()  # sizes timed once already

    def record(self, positions: int, seconds: float) -> None:
        if positions not in self._sizes:
            self._sizes.add(positions)
            return
        d = self.DECAY
        self._n = d * self._n + 1
        self._p = d * self._p + positions
        self._t = d * self._t + seconds
        self._pp = d * self._pp + positions * positions
        self._pt = d * self._pt + positions * seconds

    def line(self) -> tuple[float, float] | None:
        """(base, per_position) seconds, or None while the timed sizes do not vary."""
        n = self._n
        spread = n * self._pp - self._p * self._p
        if n < 2 or spread <= 1e-9 * n * self._pp:
            return None
        per_position = max(0.0, (n * self._pt - self._p * self._t) / spread)
        base = max((self._t - per_position * self._p) / n, 1e-9)
        return base, per_position

    def relative(self, rows: int, width: int) -> float:
        """A pass of `width` positions per row over a one-position pass of the same rows."""
        line = self.line()
        if line is None:
            return 1.0
        base, per_position = line
        return (base + per_position * rows * width) / (base + per_position * rows)


def expected_kept(acceptance: float, drafts: int) -> float:
    """Expected drafts kept of `drafts` when each is kept with probability `acceptance` once
    those before it were (verification stops at the first rejection)."""
    if acceptance >= 1.0:
        return float(drafts)
    return acceptance * (1 - acceptance**drafts) / (1 - acceptance)


def best_width(
    proposed: list[int],
    acceptance: list[float],
    relative_cost: Callable[[int], float],
    least: int = 1,
) -> int:
    """The pass width (1 + drafts verified per row; rows with fewer are padded), at least
    `least`, that yields the most expected tokens per unit of pass cost, for rows proposing
    `proposed` drafts with `acceptance` each; 1: no drafting pays this step."""
    best, best_rate = 0, 0.0
    for width in range(least, max(proposed, default=0) + 2):
        tokens = sum(
            1 + expected_kept(a, min(p, width - 1))
            for p, a in zip(proposed, acceptance, strict=True)
        )
        rate = tokens / relative_cost(width)
        if rate > best_rate:
            best, best_rate = width, rate
    return max(best, least)


@dataclass
class RowSpeculation:
    """One choice's drafting state: its draft length and, for prompt lookup or a request with a
    prediction, its n-gram index (fed the choice's tokens as they come; None when a draft model
    drafts everything)."""

    index: NgramIndex | None
    length: DraftLength
    seen: int = 0  # output tokens already added to the index
    # The request's prediction's tokens kept as drafts and emitted (each once): a kept draft
    # past the choice's end (a stop string inside a run of kept drafts) is in no output.
    prediction_kept: int = 0
    _counted: int = 0  # of the last verification's kept drafts, the first ones: counted before
    _new: int = 0  # then these: new prediction tokens, counted as they are emitted

    def propose(self, output: list[int], room: int) -> list[int]:
        """Drafts to follow `output` (the choice's tokens so far), at most `room` of them."""
        assert self.index is not None
        self.index.extend(output[self.seen :])
        self.seen = len(output)
        return self.index.propose(min(self.length.current, room))

    def kept_from_prediction(self, accepted: int, new: int) -> None:
        """The last verification kept `accepted` drafts from the prediction, its last `new` of
        them not counted before: they count once emitted (`emitted`)."""
        self._counted, self._new = accepted - new, new

    def emitted(self) -> None:
        """The choice emitted a token: the next of its kept drafts, if any are left to emit."""
        if self._counted:
            self._counted -= 1
        elif self._new:
            self._new -= 1
            self.prediction_kept += 1


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


def fit_to_pass(
    choices: list[Choice], proposed: list[int], relative_cost: Callable[[int], float]
) -> list[int]:
    """How many of its `proposed` drafts each row has verified this step: all cut to the pass
    width that pays best (`best_width`), except a seeded sampling row's, verified in full: its
    draws depend on what it drafted, and a seeded request must repeat itself whatever the pass
    timings were. A speculating row left without drafts counts an idle step (its acceptance
    estimate drifts back towards the prior)."""
    acceptance = [c.speculation.length.acceptance if c.speculation else 0.0 for c in choices]
    fixed = [seeded(choice) for choice in choices]
    least = 1 + max((p for p, f in zip(proposed, fixed, strict=True) if f), default=0)
    width = best_width(proposed, acceptance, relative_cost, least)
    counts = [p if f else min(p, width - 1) for p, f in zip(proposed, fixed, strict=True)]
    for choice, count in zip(choices, counts, strict=True):
        if choice.speculation is not None and not count:
            choice.speculation.length.record(0, 0)
    return counts


def seeded(choice: Choice) -> bool:
    """A speculating row that samples with a seed: its draws depend on what it drafts, so what
    it drafts must depend on nothing but its own tokens (not pass timings, not other rows)."""
    params = choice.sampler.params
    return choice.speculation is not None and not params.greedy and params.seed is not None


def record(choices: list[Choice], results: list[RowResult]) -> None:
    """Each row that drafted: its draft length follows what it just had kept (and what it kept
    of its prediction is counted)."""
    for choice, result in zip(choices, results, strict=True):
        speculation = choice.speculation
        if speculation is not None and result.drafted:
            speculation.length.record(result.drafted, result.accepted)
            if speculation.index is not None and speculation.index.from_prediction:
                new = speculation.index.kept(result.accepted)
                speculation.kept_from_prediction(result.accepted, new)


class Drafter(Protocol):
    """What a DecodeBatch asks of its drafter; rows are the batch's, in order."""

    def join(self, choices: list[Choice]) -> None:
        """Choices joined the batch (appended as its last rows)."""

    def keep(self, rows: list[int]) -> None:
        """Only `rows` (in order) stay in the batch."""

    def propose(self, choices: list[Choice], relative_cost: Callable[[int], float]) -> Drafts:
        """Every row's drafts for this step (at most `draft_room` each, fitted to the pass by
        `fit_to_pass` with `relative_cost`: a pass's cost by its width)."""

    def verified(self, choices: list[Choice], results: list[RowResult]) -> None:
        """What the verification of the last proposal kept, per row."""


class PromptLookup:
    """The drafter of `speculative = "prompt_lookup"`: each row proposes from its own n-gram
    index (no model, no state per batch row)."""

    def join(self, choices: list[Choice]) -> None:
        """Nothing to prepare: a choice's index was built from its prompt when it was made."""

    def keep(self, rows: list[int]) -> None:
        """Nothing per row to drop."""

    def propose(self, choices: list[Choice], relative_cost: Callable[[int], float]) -> Drafts:
        proposals: list[list[int]] = []
        for choice in choices:
            room = draft_room(choice)
            speculation = choice.speculation
            drafts = speculation.propose(choice.tokens, room) if speculation and room else []
            proposals.append(drafts)
        counts = fit_to_pass(choices, [len(p) for p in proposals], relative_cost)
        tokens = [p[:count] for p, count in zip(proposals, counts, strict=True)]
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


def verify(
    logits: mx.array,
    drafts: Drafts,
    samplers: list[TokenSampler],
    starts: list[int] | None = None,
) -> list[RowResult]:
    """Decide every row of one verification pass (logits: rows × (1 + longest draft) × vocab;
    or, packed, 1 × the rows' used positions × vocab, row i's from `starts[i]`)."""

    def row_logits(i: int, positions: int) -> mx.array:
        if starts is None:
            return logits[i, :positions]
        return logits[0, starts[i] : starts[i] + positions]

    rows = enumerate(zip(drafts.tokens, drafts.logprobs, samplers, strict=True))
    pending = [
        _prepare(row_logits(i, 1 + len(d)), d, q, sampler)
        if d
        else _plain(row_logits(i, 1), sampler)
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
