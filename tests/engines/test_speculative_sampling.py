"""Rejection sampling keeps the distribution: with drafts verified at temperature > 0, each
emitted token is distributed as the sampler's own distribution at its position (after
temperature and top-k/top-p), whatever was drafted — checked with a chi-square test over many
seeded rows verified in one call (fixed seeds: the test is deterministic)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engines.llm.sampling import TokenSampler
from engines.llm.speculative import verify
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
    results = verify(logits, [[draft]] * ROWS, samplers)
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


def test_greedy_keeps_drafts_while_they_are_the_argmax() -> None:
    logits = mx.array([[[0.0, 5.0, 1.0], [4.0, 0.0, 1.0], [0.0, 0.0, 3.0]]])
    sampler = TokenSampler(SamplingParams(0.0), 0, 3, [1])
    [kept_all] = verify(logits, [[1, 0]], [sampler])
    assert kept_all.tokens == [1, 0, 2] and kept_all.accepted == 2
    [first_wrong] = verify(logits, [[2, 0]], [TokenSampler(SamplingParams(0.0), 0, 3, [1])])
    assert first_wrong.tokens == [1] and first_wrong.accepted == 0
