"""Whisper (encoder, decoder) in MLX, with a batched decoder for windows of different requests.

Parameter names follow OpenAI's whisper (and mlx-whisper), so one store entry loads in both.
Invariants:
- Every function here runs on the ASR engine thread (MLX streams are thread-affine).
- The decoder serves a batch of rows whose prompts have different lengths by left-padding: row r's
  first `pads[r]` positions are masked out of self-attention and positions count from its first
  real token, so a row decodes exactly as it would alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np


@dataclass(frozen=True)
class ModelDimensions:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> mx.array:
    """Whisper's fixed positional encoding of the encoder."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = mx.exp(-increment * mx.arange(channels // 2))
    scaled_time = mx.arange(length)[:, None] * inv_timescales[None, :]
    return mx.concatenate([mx.sin(scaled_time), mx.cos(scaled_time)], axis=1)


Softmax = Callable[[mx.array], mx.array]  # over the last axis
Activation = Callable[[mx.array], mx.array]


def _softmax(scores: mx.array) -> mx.array:
    return mx.softmax(scores, axis=-1)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def heads(self, x: mx.array) -> mx.array:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.n_head, -1).transpose(0, 2, 1, 3)

    def project_kv(self, x: mx.array) -> tuple[mx.array, mx.array]:
        return self.heads(self.key(x)), self.heads(self.value(x))

    def project_kv_transposed(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """Keys as contiguous (batch, heads, head_dim, length) and values as contiguous (batch,
        heads, length, head_dim), for `attend_few`: made contiguous once, not copied again by
        every step's matmul (which triples the cost of `weights @ values` on the CPU)."""
        keys, values = self.project_kv(x)
        return mx.contiguous(keys.transpose(0, 1, 3, 2)), mx.contiguous(values)

    def attend_few(
        self, x: mx.array, keys_t: mx.array, values: mx.array, softmax: Softmax = _softmax
    ) -> mx.array:
        """Unmasked attention for a few queries over many keys (the decoder's cross-attention).
        Plain matmuls over keys transposed once beat the fused kernel's CPU fallback (which
        transposes the keys again at every step)."""
        q = self.heads(self.query(x)) * (keys_t.shape[-2] ** -0.5)
        weights = softmax(q @ keys_t)
        out = weights @ values
        batch, _, length, _ = out.shape
        return self.out(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))

    def attend(
        self, x: mx.array, keys: mx.array, values: mx.array, mask: mx.array | None
    ) -> mx.array:
        q = self.heads(self.query(x))
        scale = q.shape[-1] ** -0.5
        out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=scale, mask=mask)
        batch, _, length, _ = out.shape
        return self.out(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        self.mlp1 = nn.Linear(n_state, 4 * n_state)
        self.mlp2 = nn.Linear(4 * n_state, n_state)
        self.mlp_ln = nn.LayerNorm(n_state)

    def mlp(self, x: mx.array, gelu: Activation = nn.gelu) -> mx.array:
        return self.mlp2(gelu(self.mlp1(self.mlp_ln(x))))


class AudioEncoder(nn.Module):
    def __init__(self, dims: ModelDimensions) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dims.n_mels, dims.n_audio_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims.n_audio_state, dims.n_audio_state, 3, stride=2, padding=1)
        self._positional_embedding = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
        self.blocks = [
            ResidualAttentionBlock(dims.n_audio_state, dims.n_audio_head, cross_attention=False)
            for _ in range(dims.n_audio_layer)
        ]
        self.ln_post = nn.LayerNorm(dims.n_audio_state)

    def __call__(self, mel: mx.array) -> mx.array:
        """mel: (batch, frames, n_mels) → audio features (batch, frames // 2, n_state).
        (On the CPU device the engine runs host_encoder.HostEncoder instead.)"""
        x = nn.gelu(self.conv1(mel))
        x = nn.gelu(self.conv2(x))
        x = x + self._positional_embedding[: x.shape[1]]
        for block in self.blocks:
            y = block.attn_ln(x)
            keys, values = block.attn.project_kv(y)
            x = x + block.attn.attend(y, keys, values, None)
            x = x + block.mlp(x)
        return self.ln_post(x)


class DecoderState:
    """Per-batch decoder state: cross-attention keys (transposed) and values, and the growing
    self-attention cache.

    `pads[r]` is row r's left padding; positions and masks are derived from it. Rows join
    (`merge`) and leave (`select`) between steps: joining left-pads the shorter caches, leaving
    trims the columns that are padding for every remaining row.
    """

    def __init__(self, cross_kv: list[tuple[mx.array, mx.array]], pads: np.ndarray) -> None:
        self.cross_kv = cross_kv
        self.self_kv: list[tuple[mx.array, mx.array] | None] = [None] * len(cross_kv)
        self.pads = pads
        self.offset = 0  # cache length (padded positions included)

    def select(self, rows: list[int]) -> DecoderState:
        """The state of a subset of rows (finished rows leave the batch)."""
        index = mx.array(rows)
        pads = self.pads[rows]
        cut = int(pads.min())  # columns no remaining row can see
        state = DecoderState([(k[index], v[index]) for k, v in self.cross_kv], pads - cut)
        state.self_kv = [
            None if kv is None else (kv[0][index, :, cut:], kv[1][index, :, cut:])
            for kv in self.self_kv
        ]
        state.offset = self.offset - cut
        return state

    def merge(self, other: DecoderState) -> DecoderState:
        """This batch's rows followed by `other`'s (both already run over their prompts)."""
        width = max(self.offset, other.offset)
        mine, theirs = self._widened(width), other._widened(width)
        state = DecoderState(
            [
                (mx.concatenate([ka, kb]), mx.concatenate([va, vb]))
                for (ka, va), (kb, vb) in zip(self.cross_kv, other.cross_kv, strict=True)
            ],
            np.concatenate([mine.pads, theirs.pads]),
        )
        state.self_kv = [
            (mx.concatenate([a[0], b[0]]), mx.concatenate([a[1], b[1]]))
            for a, b in zip(mine.self_kv, theirs.self_kv, strict=True)
            if a is not None and b is not None
        ]
        assert len(state.self_kv) == len(self.cross_kv), "merge needs both caches filled"
        state.offset = width
        return state

    def _widened(self, width: int) -> DecoderState:
        """The same rows with their caches left-padded to `width` columns."""
        extra = width - self.offset
        if extra == 0:
            return self
        state = DecoderState(self.cross_kv, self.pads + extra)
        state.self_kv = [None if kv is None else _left_pad(kv, extra) for kv in self.self_kv]
        state.offset = width
        return state


def _left_pad(kv: tuple[mx.array, mx.array], extra: int) -> tuple[mx.array, mx.array]:
    keys, values = kv
    batch, heads, _, dim = keys.shape
    zeros = mx.zeros((batch, heads, extra, dim), keys.dtype)
    return mx.concatenate([zeros, keys], axis=2), mx.concatenate([zeros, values], axis=2)


class TextDecoder(nn.Module):
    def __init__(self, dims: ModelDimensions) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(dims.n_vocab, dims.n_text_state)
        self.positional_embedding = mx.zeros((dims.n_text_ctx, dims.n_text_state))
        self.blocks = [
            ResidualAttentionBlock(dims.n_text_state, dims.n_text_head, cross_attention=True)
            for _ in range(dims.n_text_layer)
        ]
        self.ln = nn.LayerNorm(dims.n_text_state)
        # Set on the CPU device (host_encoder.PROMPT_MATH): softmax and GELU computed on the host
        # when many positions are run at once (prompts), where MLX's scalar exp/erf dominate.
        self.prompt_math: tuple[Softmax, Activation] | None = None

    def cross_kv(self, audio_features: mx.array) -> list[tuple[mx.array, mx.array]]:
        """Each layer's cross-attention keys (transposed) and values for these windows."""
        cross_kv = []
        for block in self.blocks:
            assert block.cross_attn is not None
            cross_kv.append(block.cross_attn.project_kv_transposed(audio_features))
        return cross_kv

    def start(self, audio_features: mx.array, pads: np.ndarray) -> DecoderState:
        return DecoderState(self.cross_kv(audio_features), pads)

    def cross_attention_scores(self, tokens: mx.array, audio_features: mx.array) -> list[mx.array]:
        """Each layer's cross-attention scores (batch, heads, tokens, audio positions), scaled,
        before the softmax: what word alignment reads."""
        scores: list[mx.array] = []
        self(tokens, self.start(audio_features, np.zeros(tokens.shape[0], np.int64)), scores)
        mx.eval(scores)
        return scores

    def __call__(
        self, tokens: mx.array, state: DecoderState, cross_scores: list[mx.array] | None = None
    ) -> mx.array:
        """Run `tokens` (batch, length) through the decoder, extending `state`'s cache; return
        the final hidden states (batch, length, n_state). With `cross_scores`, each layer's
        cross-attention scores are appended to it."""
        length = tokens.shape[1]
        start = state.offset
        key_positions = np.arange(start + length)
        query_positions = np.arange(start, start + length)
        positions = np.maximum(query_positions[None, :] - state.pads[:, None], 0)
        visible = (key_positions[None, None, :] <= query_positions[None, :, None]) & (
            key_positions[None, None, :] >= state.pads[:, None, None]
        )
        mask = mx.array(np.where(visible, 0.0, -np.inf).astype(np.float32))[:, None]
        softmax, gelu = self.prompt_math if self.prompt_math and length > 1 else (_softmax, nn.gelu)
        x = self.token_embedding(tokens) + self.positional_embedding[mx.array(positions)]
        for i, block in enumerate(self.blocks):
            y = block.attn_ln(x)
            keys, values = block.attn.project_kv(y)
            cached = state.self_kv[i]
            if cached is not None:
                keys = mx.concatenate([cached[0], keys], axis=2)
                values = mx.concatenate([cached[1], values], axis=2)
            state.self_kv[i] = (keys, values)
            x = x + block.attn.attend(y, keys, values, mask.astype(x.dtype))
            assert block.cross_attn is not None and block.cross_attn_ln is not None
            cross_keys, cross_values = state.cross_kv[i]
            y = block.cross_attn_ln(x)
            if cross_scores is not None:
                q = block.cross_attn.heads(block.cross_attn.query(y))
                cross_scores.append((q * cross_keys.shape[-2] ** -0.5) @ cross_keys)
            x = x + block.cross_attn.attend_few(y, cross_keys, cross_values, softmax)
            x = x + block.mlp(x, gelu)
        state.offset += length
        return self.ln(x)

    def logits(self, hidden: mx.array) -> mx.array:
        return self.token_embedding.as_linear(hidden).astype(mx.float32)


class Whisper(nn.Module):
    def __init__(self, dims: ModelDimensions) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)


def load_whisper(directory: Path, dtype: mx.Dtype = mx.float32) -> Whisper:
    """Load a store entry written by the CT2 importer (or any mlx-whisper-layout directory)."""
    dims = ModelDimensions(**json.loads((directory / "config.json").read_text()))
    model = Whisper(dims)
    weights = mx.load(str(directory / "weights.safetensors"))
    assert isinstance(weights, dict)
    model.load_weights([(k, v.astype(dtype)) for k, v in weights.items()], strict=True)
    mx.eval(model.parameters())
    return model
