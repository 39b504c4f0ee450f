"""Decode steps on MLX's CPU backend: mlx-lm's attention math, in fewer and larger operations.

MLX's CPU backend has no kernel for rotary embeddings or attention: both fall back to chains of
small operations, and on a decode step (one new token per row) those chains cost more than the
matrix products of the weights around them (SmolLM2-135M, 8 rows, ~400 cached tokens:
without rotary embeddings a step took 12% less time, without attention 32% less). Two rewrites,
each computing exactly what the fallback computes, in the same order (tests compare outputs
bit for bit):

- Rotary tables: every layer of a decode step rotates its new token by the same positions (the
  engine runs only plain KV caches, filled in lockstep), so the step computes the cosines and
  sines once (`DecodeStep.tables`) and every wrapped `nn.RoPE` (`TabledRoPE`) applies them,
  instead of each layer recomputing them for its queries and for its keys.
- `grouped_decode_attention`: with grouped-query attention, MLX's fallback broadcasts each key
  head over its query heads and multiplies rows x query heads single-row products; folding the
  query heads that share a key head into the rows of one product does rows x key heads products.

A speculative verification pass (`decode_step(offsets, width)`: the pending token and drafts,
`width` new tokens per row) gets the same two rewrites: tables for `width` positions per row,
and the queries' heads and new tokens folded into the rows of one product per key head, under
the pass's mask (mlx-lm's "causal" string, rebuilt as MLX's fallback builds it, or the batch
cache's padding mask). On SmolLM2 (one row, ~600 cached tokens) a 7-wide pass went from 1.59 to
1.53 one-token steps; the largest part of the rest was the softmax's exponentials (MLX's CPU
`exp` is a scalar polynomial, ~13 ns each on this x86). Both kinds of step take their softmax from
native_softmax (the same numbers, ~10x faster where it runs); then the wider matrix products.

Prompt passes run through `PromptPasses` on the same terms: a prompt chunk is a wide pass. A
verification pass whose rows are padded to the longest draft runs its per-position products on
the used positions alone (`PackedPositions`, `PackedFinalNorm`; `decode_step(..., used)`).

`install(model)` puts both in place, for the model modules they were checked against; they act
only while the calling thread builds a step inside `decode_step(offsets)`, which the engine's
DecodeBatch does only when its device is the CPU. Everything else (prefill passes, other
devices, masks or options the rewrite does not cover) runs the original code.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engines.llm import native_softmax

# The name under which mlx-lm's model modules import their attention function.
_ATTENTION = "scaled_dot_product_attention"

# mlx-lm model modules read for what the rewrites assume: every attention layer rotates its
# queries and keys at `cache.offset` and calls the module's attention function. Other models
# run unchanged (a rope at another position would be rotated wrongly).
REVIEWED_MODULES = frozenset(
    {
        "llama",
        "qwen2",
        "qwen3",
        "phi3",
        "gemma",
        "starcoder2",
        "olmo2",
        "granite",
        "internlm2",
        "cohere",
    }
)


class DecodeStep:
    """The positions of the step being built (`width` new tokens per row, the first at the row's
    offset), and the rotary tables and causal masks derived from them."""

    def __init__(
        self, offsets: mx.array | int, width: int = 1, used: list[int] | None = None
    ) -> None:
        positions = offsets if isinstance(offsets, mx.array) else mx.array([offsets])
        self.width = width
        self._positions = positions.astype(mx.float32)
        self._tables: dict[tuple[int, float, float, mx.Dtype], tuple[mx.array, mx.array]] = {}
        self._causal: dict[int, mx.array] = {}
        # A verification pass whose rows use only their first `used[i]` positions (the rest
        # pad the row to `width`): the indices of the used positions among rows x width, when
        # some are padding. The per-position modules run on those alone (`PackedPositions`).
        self.packed: mx.array | None = None
        if used is not None and sum(used) < len(used) * width:
            self.packed = mx.array(
                [row * width + j for row, n in enumerate(used) for j in range(n)]
            )
        self.packed_logits = False  # set when the final norm kept only the used positions

    @property
    def rows(self) -> int:
        return int(self._positions.size)

    def tables(self, rope: nn.RoPE, dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
        """(cos, sin) of shape (rows, 1, width, dims / 2) for `rope` at this step's positions."""
        key = (rope.dims, float(rope.base), float(rope.scale), dtype)
        if key not in self._tables:
            # As MLX's fallback does: positions * scale times exp(-i * log(base) / half).
            half = rope.dims // 2
            log_base = mx.log(mx.array(rope.base, dtype=mx.float32)) / half
            inverse_frequencies = mx.exp(mx.arange(0, -half, -1, dtype=mx.float32) * log_base)
            positions = self._positions[:, None] + mx.arange(self.width, dtype=mx.float32)
            theta = (positions * rope.scale)[:, None, :, None] * inverse_frequencies
            self._tables[key] = (mx.cos(theta).astype(dtype), mx.sin(theta).astype(dtype))
        return self._tables[key]

    def causal(self, keys: int) -> mx.array:
        """(width, keys) bool: new token j sees keys up to keys - width + j, as MLX's fallback
        builds a "causal" mask (queries are the last `width` positions)."""
        if keys not in self._causal:
            first = max(keys - self.width, 0)
            queries = mx.arange(first, first + self.width)[:, None]
            self._causal[keys] = queries >= mx.arange(keys)[None]
        return self._causal[keys]


class _Current(threading.local):
    step: DecodeStep | None = None


# The decode step this thread is building (an engine thread builds one at a time), if any.
_current = _Current()


@contextmanager
def decode_step(
    offsets: mx.array | int, width: int = 1, used: list[int] | None = None
) -> Iterator[DecodeStep]:
    """Build one step whose rows' `width` new tokens start at `offsets` (one per row, or an
    int): a decode step (width 1) or a verification pass over drafts, row i's used positions
    being its first `used[i]` (None: all)."""
    step = _current.step = DecodeStep(offsets, width, used)
    try:
        yield step
    finally:
        _current.step = None


def _decoding(rows: int, length: int) -> DecodeStep | None:
    step = _current.step
    return step if step is not None and length == step.width and rows == step.rows else None


def _packing(x: mx.array) -> DecodeStep | None:
    """The step being built, if it packs and `x` is its (rows, width, features) activations."""
    step = _current.step
    if step is None or step.packed is None or x.ndim != 3:
        return None
    return step if x.shape[0] == step.rows and x.shape[1] == step.width else None


class _Packing(nn.Module):
    """A wrapped per-position module that sees a packing step's used positions."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @staticmethod
    def used(x: mx.array) -> tuple[DecodeStep, mx.array] | None:
        """In a step that packs `x` (rows, width, features): the step and x's used positions,
        (1, used positions, features); else None."""
        step = _packing(x)
        if step is None or step.packed is None:
            return None
        return step, x.reshape(-1, x.shape[-1])[step.packed][None]


class PackedPositions(_Packing):
    """A per-position module (a decoder layer's MLP) that, in a verification pass with padded
    rows, runs on the used positions only and leaves zeros at the padding (which only later
    padding positions attend to: each row's used positions come first, and attention within
    the pass is causal). The MLP is most of a position's arithmetic: on a CPU, where a pass
    costs about its positions, padding rows to the longest draft cost as much as drafting
    (SmolLM2, 8 rows, with the head packed too: one row verifying 8 drafts, the others none,
    338 -> 225 ms)."""

    def __call__(self, x: mx.array) -> mx.array:
        packing = self.used(x)
        if packing is None:
            return self.inner(x)
        step, used = packing
        rows, width, _ = x.shape
        outputs = self.inner(used)[0]
        out = mx.zeros((rows * width, outputs.shape[-1]), dtype=outputs.dtype)
        out[step.packed] = outputs
        return out.reshape(rows, width, -1)


class PackedFinalNorm(_Packing):
    """The model's final norm that, in a verification pass with padded rows, keeps only the used
    positions: the output head (a vocabulary-wide product per position) then computes their
    logits alone, (1, used positions, vocab), and the step records it (`packed_logits`)."""

    def __call__(self, x: mx.array) -> mx.array:
        packing = self.used(x)
        if packing is None:
            return self.inner(x)
        step, used = packing
        step.packed_logits = True
        return self.inner(used)


class TabledRoPE(nn.Module):
    """An `nn.RoPE` that applies the decode step's shared tables inside `decode_step`."""

    def __init__(self, rope: nn.RoPE) -> None:
        super().__init__()
        self.rope = rope

    def __call__(self, x: mx.array, offset: Any = 0) -> mx.array:
        step = _decoding(x.shape[0], x.shape[2]) if x.ndim == 4 else None
        if step is None:
            return self.rope(x, offset=offset)
        cos, sin = step.tables(self.rope, x.dtype)
        dims = self.rope.dims
        first, second = x[..., : dims // 2], x[..., dims // 2 : dims]
        parts = [first * cos - second * sin, first * sin + second * cos]
        if dims < x.shape[-1]:
            parts.append(x[..., dims:])
        return mx.concatenate(parts, axis=-1)


def grouped_decode_attention(original: Callable[..., mx.array]) -> Callable[..., mx.array]:
    """mlx-lm's `scaled_dot_product_attention`, grouped for the queries of a `decode_step`
    (one new token per row, or a verification pass's several)."""

    def attention(
        queries: mx.array,
        keys: mx.array,
        values: mx.array,
        cache: Any,
        scale: float,
        mask: Any,
        sinks: mx.array | None = None,
    ) -> mx.array:
        rows, heads, length, _ = queries.shape
        step = _decoding(rows, length)
        # Quantized caches (keys are (data, scales, biases)) have their own attention; the
        # wrapper is module-wide, so it also sees other engines' quantized models.
        key_heads = 0 if hasattr(cache, "bits") else keys.shape[1]
        if (
            step is None
            or not key_heads
            or heads == key_heads
            or sinks is not None
            or not (queries.dtype == keys.dtype == values.dtype)
            or not (mask is None or isinstance(mask, mx.array) or mask == "causal")
            or (isinstance(mask, mx.array) and mask.ndim >= 3 and mask.shape[-3] != 1)
        ):  # per-head masks, sinks, mixed dtypes: the original
            return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        group = heads // key_heads
        # (rows, key heads, group x new tokens, dim): one product per row and key head, the
        # query heads that share a key head and their new tokens folded into its rows.
        grouped = (queries * scale).reshape(rows, key_heads, group * length, -1)
        scores = grouped @ keys.swapaxes(-1, -2)
        if isinstance(mask, str):
            mask = step.causal(keys.shape[2])
        if mask is not None:
            # (rows, key heads, group, new tokens, keys): the mask's query axis lines up.
            scores = scores.reshape(rows, key_heads, group, length, -1)
            mask = mx.expand_dims(mask, -3)
            if mask.dtype == mx.bool_:
                scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
            else:
                scores = scores + mask.astype(scores.dtype)
            scores = scores.reshape(rows, key_heads, group * length, -1)
        # Our own scores: the native kernel may overwrite them with their softmax.
        weights = native_softmax.softmax(scores)
        return (weights @ values).reshape(rows, heads, length, -1)

    attention.original = original  # type: ignore[attr-defined]
    return attention


class PromptPasses:
    """`model` for a CPU engine's prompt passes: each pass (`width` prompt tokens per row after
    the cache's `offset`) is built inside `decode_step`, so it gets the same rewrites as a
    verification pass (a prompt chunk is one wide pass under a causal or padding mask) and the
    native softmax, whose share of a prompt pass grows with its length (SmolLM2: 500 tokens
    2.37 -> 1.6 s, 2,000 tokens 22.8 -> 11.0 s). Passes with extra inputs (embeddings, position
    ids) run the model as it is."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, tokens: mx.array, cache: Any, **inputs: mx.array) -> mx.array:
        if inputs:
            return self.model(tokens, cache=cache, **inputs)
        with decode_step(cache[0].offset, tokens.shape[1]):
            return self.model(tokens, cache=cache)


def install(model: nn.Module, packing: bool = True) -> bool:
    """Wrap the model's `nn.RoPE`s and its module's attention function (once per module) and,
    with `packing`, its MLPs and final norm for packed verification passes (a draft model,
    which never verifies, goes without: they would only add work to its passes); False,
    touching nothing, for a model outside `REVIEWED_MODULES`."""
    package, _, name = type(model).__module__.rpartition(".")
    if package != "mlx_lm.models" or name not in REVIEWED_MODULES:
        return False
    module = sys.modules[type(model).__module__]
    wrapped = [
        (parent, key, child)
        for _, parent in model.named_modules()
        for key, child in parent.items()
        if type(child) is nn.RoPE and not child.traditional
    ]
    for parent, key, child in wrapped:
        parent[key] = TabledRoPE(child)
    # The per-position modules packed in verification passes: each decoder layer's MLP and the
    # final norm (before the output head), where the model has them under mlx-lm's usual names.
    # (Packing the attention projections too measured no faster: their gathers and scatters
    # cost about what they save.)
    inner: Any = getattr(model, "model", None) if packing else None
    for layer in getattr(inner, "layers", None) or []:
        mlp = getattr(layer, "mlp", None)
        if isinstance(mlp, nn.Module) and not isinstance(mlp, PackedPositions):
            layer.mlp = PackedPositions(mlp)
    norm = getattr(inner, "norm", None)
    if isinstance(norm, nn.Module) and not isinstance(norm, PackedFinalNorm):
        inner.norm = PackedFinalNorm(norm)
    current = getattr(module, _ATTENTION, None)
    if current is not None and not hasattr(current, "original"):
        setattr(module, _ATTENTION, grouped_decode_attention(current))
    return True
