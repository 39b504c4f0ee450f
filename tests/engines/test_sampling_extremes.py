"""Sampling parameters at the edges of what the spec allows (temperature > 0, 0 < top_p ≤ 1)
still draw real tokens: float32 must not turn them into inf/NaN rows or an empty nucleus."""

from __future__ import annotations

import mlx.core as mx
import pytest

from engines.llm.sampling import TokenSampler
from engines.types import SamplingParams

VOCAB = 64


def _logits() -> mx.array:
    row = mx.arange(VOCAB, dtype=mx.float32) / 8  # the likeliest token is the last
    return row[None]


def _draw(params: SamplingParams, seed: int) -> int:
    sampler = TokenSampler(params, seed, VOCAB, [1])
    return int(sampler(_logits()).token.item())


@pytest.mark.parametrize("temperature", [1e-320, 1e-40, 1e-31])
def test_a_vanishing_temperature_is_the_argmax(temperature: float) -> None:
    params = SamplingParams(temperature=temperature)
    assert params.greedy
    assert {_draw(params, seed) for seed in range(8)} == {VOCAB - 1}


def test_a_small_temperature_above_the_threshold_still_samples() -> None:
    params = SamplingParams(temperature=1e-3)
    assert not params.greedy
    assert {_draw(params, seed) for seed in range(8)} == {VOCAB - 1}  # sharp, but a draw


@pytest.mark.parametrize("top_p", [1e-300, 1e-46, 1e-10])
def test_a_vanishing_top_p_keeps_the_likeliest_token(top_p: float) -> None:
    params = SamplingParams(temperature=1.0, top_p=top_p)
    assert {_draw(params, seed) for seed in range(8)} == {VOCAB - 1}
