"""Numpy versions of the encoder's two transcendental-heavy steps, for the CPU device.

On the CPU, MLX evaluates `exp` and `erf` one element at a time (~12 and ~27 ns an element);
numpy's are vectorised (~1 ns). Whisper's encoder applies them to tens of millions of values per
30 s window (the attention softmax over heads × 1500 × 1500 scores, the GELU over 1500 × 4·width
activations), so on the CPU these two steps run in numpy: ~40% off the encoder's time. On GPUs
MLX's own kernels are used. Both match MLX's results to float32 rounding (tests compare them).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

# Abramowitz & Stegun 7.1.26: erf to within 1.5e-7, i.e. float32 precision.
_P = np.float32(0.3275911)
_A = [np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)]
_SQRT_HALF = np.float32(0.7071067811865476)


def softmax(scores: mx.array) -> mx.array:
    """Softmax over the last axis."""
    values = np.array(scores, dtype=np.float32)
    values -= values.max(axis=-1, keepdims=True)
    np.exp(values, out=values)
    values /= values.sum(axis=-1, keepdims=True)
    return mx.array(values)


def gelu(x: mx.array) -> mx.array:
    """The exact (erf) GELU: 0.5·x·(1 + erf(x/√2))."""
    values = np.array(x, dtype=np.float32)
    z = np.abs(values) * _SQRT_HALF
    t = 1.0 / (1.0 + _P * z)
    poly = _A[0] * t
    for coefficient in _A[1:]:
        poly = (poly + coefficient) * t
    erf = np.copysign(1.0 - poly * np.exp(-z * z), values)
    return mx.array(0.5 * values * (1.0 + erf))
