"""Whisper's audio encoder (and the decoder's cross-attention key/value projections) in numpy,
used on the CPU device instead of MLX.

On the CPU, MLX evaluates `exp` and `erf` one element at a time (~12 and ~27 ns an element;
numpy's are vectorised, ~1 ns), and interleaving MLX's BLAS with numpy's (each keeps its threads
spinning between calls) slowed both about 2×. Whisper's encoder is dense compute over a fixed
1500 × width activation, so on the CPU it runs here whole, on one BLAS: the attention one head
at a time (each head's 1500 × 1500 scores are exponentiated and used while in cache) and the
GELU in cache-sized chunks. One 30 s window of tiny.en on the 2-core dev machine: ~0.4 s here,
~0.65 s for MLX with host softmax and GELU, ~1.5 s for MLX alone. GPUs use the MLX encoder.

Also here: softmax and GELU on the host for the decoder's prompt passes (`PROMPT_MATH`), where
many positions run at once and MLX's scalar exp/erf dominate (a 90-token prompt of 8 windows:
~0.6 s in MLX); single-token decode steps stay in MLX (a host round trip per layer would cost
more than it saves).

Invariants: computes what `AudioEncoder` (and `TextDecoder.cross_kv`) compute, to float32
rounding (tests compare them); `HostEncoder` holds float32 copies of the weights and touches no
MLX state.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engines.asr.whisper import ResidualAttentionBlock, Whisper, sinusoids

# Abramowitz & Stegun 7.1.26: erf to within 1.5e-7, i.e. float32 precision.
_P = np.float32(0.3275911)
_A = [np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)]
_SQRT_HALF = np.float32(0.7071067811865476)
_CHUNK = 32768  # float32 elements processed together by `gelu`
_LAYER_NORM_EPS = 1e-5  # mlx.nn.LayerNorm's default, as whisper was trained


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU: 0.5·x·(1 + erf(x/√2)), in chunks (the dozen passes of the
    polynomial then stay in L2, which is faster than whole-array passes: docs/benchmarks.md,
    "Measurements behind the code")."""
    values = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty_like(values)
    for start in range(0, values.size, _CHUNK):
        chunk = values[start : start + _CHUNK]
        z = np.abs(chunk)
        z *= _SQRT_HALF
        t = _P * z
        t += 1.0
        np.reciprocal(t, out=t)
        poly = _A[0] * t
        for coefficient in _A[1:]:
            poly += coefficient
            poly *= t
        np.multiply(z, z, out=z)
        np.negative(z, out=z)
        np.exp(z, out=z)
        poly *= z  # erf(|x|/√2) = 1 − poly·exp(−x²/2)
        np.subtract(1.0, poly, out=poly)
        np.copysign(poly, chunk, out=poly)
        poly += 1.0
        poly *= chunk
        np.multiply(poly, 0.5, out=out[start : start + _CHUNK])
    return out.reshape(x.shape)


def attention(queries: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """softmax(queries · keysᵀ) · values for (heads, length, head_dim) arrays, one head at a
    time; scale the queries beforehand. Unmasked (the encoder's self-attention)."""
    out = np.empty_like(queries)
    for head in range(queries.shape[0]):
        scores = queries[head] @ keys[head].T
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        total = scores.sum(axis=-1, keepdims=True)
        np.divide(scores @ values[head], total, out=out[head])
    return out


def softmax_on_host(scores: mx.array) -> mx.array:
    """Softmax over the last axis of an MLX array, computed in numpy (evaluates `scores`)."""
    values = np.array(scores, dtype=np.float32)
    values -= values.max(axis=-1, keepdims=True)
    np.exp(values, out=values)
    values /= values.sum(axis=-1, keepdims=True)
    return mx.array(values)


def gelu_on_host(x: mx.array) -> mx.array:
    """`gelu` of an MLX array, computed in numpy (evaluates `x`)."""
    return mx.array(gelu(np.array(x, dtype=np.float32)))


# For TextDecoder.prompt_math on the CPU device.
PROMPT_MATH = (softmax_on_host, gelu_on_host)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=-1, keepdims=True)
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(variance + _LAYER_NORM_EPS) * weight + bias


def _array(value: object) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def _norm(layer: nn.LayerNorm) -> tuple[np.ndarray, np.ndarray]:
    return _array(layer.weight), _array(layer.bias)


class _Linear:
    def __init__(self, layer: nn.Linear) -> None:
        self.weight_t = np.ascontiguousarray(_array(layer.weight).T)
        self.bias = _array(layer.bias) if "bias" in layer else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight_t
        if self.bias is not None:
            y += self.bias
        return y


class _Conv:
    """A 1-D convolution (padding 1) as one matmul over strided windows of the input."""

    def __init__(self, layer: nn.Conv1d, stride: int) -> None:
        weight = _array(layer.weight)  # (out, kernel, in)
        self.kernel = weight.shape[1]
        self.weight_t = np.ascontiguousarray(weight.reshape(weight.shape[0], -1).T)
        self.bias = _array(layer.bias)
        self.stride = stride

    def __call__(self, x: np.ndarray) -> np.ndarray:
        length, channels = x.shape
        padded = np.pad(x, ((1, 1), (0, 0)))
        n = (length + 2 - self.kernel) // self.stride + 1
        windows = np.lib.stride_tricks.as_strided(
            padded,
            shape=(n, self.kernel, channels),
            strides=(padded.strides[0] * self.stride, padded.strides[0], padded.strides[1]),
            writeable=False,
        )
        y = windows.reshape(n, self.kernel * channels) @ self.weight_t
        y += self.bias
        return y


class _Block:
    def __init__(self, block: ResidualAttentionBlock, n_head: int) -> None:
        attn = block.attn
        self.n_head = n_head
        self.query, self.key, self.value, self.out = (
            _Linear(layer) for layer in (attn.query, attn.key, attn.value, attn.out)
        )
        self.attn_ln, self.mlp_ln = _norm(block.attn_ln), _norm(block.mlp_ln)
        self.mlp1, self.mlp2 = _Linear(block.mlp1), _Linear(block.mlp2)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        length, width = x.shape
        y = _layer_norm(x, *self.attn_ln)
        scale = np.float32((width // self.n_head) ** -0.5)

        def heads(z: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(z.reshape(length, self.n_head, -1).transpose(1, 0, 2))

        attended = attention(heads(self.query(y) * scale), heads(self.key(y)), heads(self.value(y)))
        x = x + self.out(attended.transpose(1, 0, 2).reshape(length, width))
        return x + self.mlp2(gelu(self.mlp1(_layer_norm(x, *self.mlp_ln))))


class HostEncoder:
    """A float32 numpy copy of a whisper's encoder and of its decoder's cross-attention key and
    value projections (built on the engine thread from the model's weights)."""

    def __init__(self, model: Whisper) -> None:
        dims, encoder = model.dims, model.encoder
        self.conv1 = _Conv(encoder.conv1, stride=1)
        self.conv2 = _Conv(encoder.conv2, stride=2)
        self.positions = _array(sinusoids(dims.n_audio_ctx, dims.n_audio_state))
        self.blocks = [_Block(block, dims.n_audio_head) for block in encoder.blocks]
        self.ln_post = _norm(encoder.ln_post)
        self.text_heads = dims.n_text_head
        self.cross = []
        for block in model.decoder.blocks:
            assert block.cross_attn is not None
            self.cross.append((_Linear(block.cross_attn.key), _Linear(block.cross_attn.value)))

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """mel: (batch, frames, n_mels) → audio features (batch, frames // 2, n_state)."""
        return np.stack([self._one(window) for window in mel])

    def cross_kv(self, features: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The decoder's cross-attention inputs for one window's features (ctx, state): per
        layer, keys as (1, heads, head_dim, ctx) and values as (1, heads, ctx, head_dim) — what
        `TextDecoder.cross_kv` computes, here on the same BLAS as the encoder."""
        length = features.shape[0]
        out = []
        for key, value in self.cross:
            keys = key(features).reshape(length, self.text_heads, -1)
            values = value(features).reshape(length, self.text_heads, -1)
            out.append(
                (
                    np.ascontiguousarray(keys.transpose(1, 2, 0))[None],
                    np.ascontiguousarray(values.transpose(1, 0, 2))[None],
                )
            )
        return out

    def _one(self, mel: np.ndarray) -> np.ndarray:
        x = gelu(self.conv2(gelu(self.conv1(mel))))
        x = x + self.positions[: x.shape[0]]
        for block in self.blocks:
            x = block(x)
        return _layer_norm(x, *self.ln_post)
