"""Per-sequence token sampling on the engine thread.

Order of operations (documented in docs/api.md): logits → temperature → top-k → top-p → min-p →
sample. temperature 0 is greedy (argmax), whatever the other settings.

Each sequence draws from its own random stream: the key for step n is derived on the host from
(seed, n), so a seeded request gives the same tokens whatever else the engine is running, and no
lazy key chain grows across steps.
"""

from __future__ import annotations

import secrets

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from engines.types import SamplingParams

_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """splitmix64 finaliser: spreads (seed, step) pairs over the whole 64-bit key space."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class TokenSampler:
    """Turns the last position's logits (shape (1, vocab)) into a token id array of shape (1,)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._step = 0

    def __call__(self, logits: mx.array) -> mx.array:
        params = self.params
        if params.greedy:
            return mx.argmax(logits, axis=-1)
        scaled = logits.astype(mx.float32) * (1.0 / params.temperature)
        logprobs = scaled - mx.logsumexp(scaled, axis=-1, keepdims=True)
        if 0 < params.top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, params.top_k)
        if 0.0 < params.top_p < 1.0:
            logprobs = apply_top_p(logprobs, params.top_p)
        if params.min_p > 0.0:
            logprobs = apply_min_p(logprobs, params.min_p)
        key = mx.random.key(_mix64((self.seed << 20) ^ self._step) >> 1)
        self._step += 1
        return mx.random.categorical(logprobs, key=key)
