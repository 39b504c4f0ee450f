"""Rejection sampling keeps the distribution: with drafts verified at temperature > 0, each
emitted token is distributed as the sampler's own distribution at its position (after
temperature and top-k/top-p), whatever was drafted — a fixed draft (prompt lookup: a point
mass) or a draft drawn from a draft model's own distribution q — checked with a chi-square test
over many seeded rows verified in one call (fixed seeds: the test is deterministic)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engines.llm.sampling import TokenSampler
from engines.llm.speculative import Drafts, verify
from engines.types import SamplingParams

VOCAB = 6
ROWS = 1500
LOGITS = mx.array(
    [
        [1.0, 2.0, 0.5, -1.0, 1.5, 0.0],  # position 0: where the draft is checked
        [0.0, -0.5, 2.5, 1.0, 0.3, 1.2],  # position 1: the token after a kept draft
    ]
)
# Critical chi-square values at p = 0.001 by degrees of freedom (1..5).
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}


def expected(params: SamplingParams, position: int) -> np.ndarray:
    sampler = TokenSampler(params, 0, VOCAB, [1])
    _, filtered = sampler.distribution(LOGITS[position : position + 1])
    probs = mx.softmax(filtered, axis=-1)[0]
    return np.array(probs.tolist())


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    support = probs > 0
    assert counts[~support].sum() == 0, "a token outside the distribution was emitted"
    total = counts.sum()
    want = probs[support] * total
    return float(((counts[support] - want) ** 2 / want).sum()), int(support.sum()) - 1


@pytest.mark.parametrize(
    "params",
    [SamplingParams(0.8), SamplingParams(1.3, top_k=4), SamplingParams(0.9, top_p=0.8)],
    ids=["t0.8", "t1.3-topk4", "t0.9-topp0.8"],
)
@pytest.mark.parametrize("draft", [1, 3])  # a likely draft, and one often filtered out
def test_verified_tokens_follow_the_target_distribution(params: SamplingParams, draft: int) -> None:
    samplers = [TokenSampler(params, seed, VOCAB, [1]) for seed in range(ROWS)]
    logits = mx.broadcast_to(LOGITS[None], (ROWS, 2, VOCAB))
    results = verify(logits, Drafts([[draft]] * ROWS, [None] * ROWS), samplers)
    first = np.bincount([r.tokens[0] for r in results], minlength=VOCAB)
    statistic, df = chi_square(first, expected(params, 0))
    assert statistic < CHI2_999[df], (statistic, first)
    # After a kept draft, the next token follows position 1's distribution.
    after = [r.tokens[1] for r in results if r.accepted == 1]
    if len(after) > 200:
        second = np.bincount(after, minlength=VOCAB)
        statistic, df = chi_square(second, expected(params, 1))
        assert statistic < CHI2_999[df], (statistic, second)
    # Each verification advanced its sampler by the tokens it emitted.
    assert all(s._step == len(r.tokens) for s, r in zip(samplers, results, strict=True))


# Draft models' distributions at position 0 (as logprobs): one close to the target's, one far
# from it that never proposes token 2 (a draft filtered by its own top-k).
DRAFT_Q = {
    "near": [0.9, 2.1, 0.4, -0.8, 1.2, 0.1],
    "far": [2.0, -1.0, -mx.inf, 1.5, -0.5, 0.8],
}


@pytest.mark.parametrize(
    "params", [SamplingParams(0.8), SamplingParams(1.3, top_k=4)], ids=["t0.8", "t1.3-topk4"]
)
@pytest.mark.parametrize("q_name", sorted(DRAFT_Q))
def test_drafts_from_a_draft_model_keep_the_target_distribution(
    params: SamplingParams, q_name: str
) -> None:
    """Each row's draft is drawn from q (numpy, seeded) and verified against p with q: the
    emitted first token follows p, and drafts are kept about sum(min(p, q)) of the time."""
    q = mx.log(mx.softmax(mx.array([DRAFT_Q[q_name]]), axis=-1))  # (1, VOCAB)
    probs_q = np.array(mx.exp(q)[0].tolist())
    drafts = np.random.default_rng(7).choice(VOCAB, size=ROWS, p=probs_q / probs_q.sum())
    samplers = [TokenSampler(params, seed, VOCAB, [1]) for seed in range(ROWS)]
    logits = mx.broadcast_to(LOGITS[None], (ROWS, 2, VOCAB))
    rows = Drafts([[int(d)] for d in drafts], [q] * ROWS)
    results = verify(logits, rows, samplers)
    first = np.bincount([r.tokens[0] for r in results], minlength=VOCAB)
    p0 = expected(params, 0)
    statistic, df = chi_square(first, p0)
    assert statistic < CHI2_999[df], (statistic, first)
    kept = sum(r.accepted for r in results) / ROWS
    want = np.minimum(p0, probs_q).sum()
    assert abs(kept - want) < 4 * np.sqrt(want * (1 - want) / ROWS), (kept, want)


def test_greedy_keeps_drafts_while_they_are_the_argmax() -> None:
    logits = mx.array([[[0.0, 5.0, 1.0], [4.0, 0.0, 1.0], [0.0, 0.0, 3.0]]])
    sampler = TokenSampler(SamplingParams(0.0), 0, 3, [1])
    [kept_all] = verify(logits, Drafts([[1, 0]], [None]), [sampler])
    assert kept_all.tokens == [1, 0, 2] and kept_all.accepted == 2
    [first_wrong] = verify(
        logits, Drafts([[2, 0]], [None]), [TokenSampler(SamplingParams(0.0), 0, 3, [1])]
    )
    assert first_wrong.tokens == [1] and first_wrong.accepted == 0
