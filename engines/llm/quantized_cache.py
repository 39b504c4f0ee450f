"""Quantized KV caches that batch: `kv_bits` 4 or 8 with a scale and a bias per group.

mlx-lm's `QuantizedKVCache` stores keys and values as (packed data, scales, biases) and its
attention (`quantized_scaled_dot_product_attention`, chosen by the cache's `bits` attribute)
multiplies the queries with them directly, but it has no batch form (no `merge`). Here:

- `QuantizedKV`: mlx-lm's single-sequence cache, plus `merge` into the batch form;
- `BatchQuantizedKV`: the batch form, dense and left-padded like mlx-lm's `BatchKVCache` (the
  same `offset`, `left_padding`, `_idx` bookkeeping and mask), each of its keys and values a
  triple of arrays; `prepare`/`finalize` take right-padded prompts (rolled to the left after the
  pass), `filter`/`extend`/`extract` let rows leave and join.

Padding positions hold zeros (data, scale and bias: they dequantize to 0) and are masked out.

`install(model, bits, group_size)` makes the model's `make_cache` build these, so every cache
the engine makes (prefill, prefix cache, batch) is quantized: admission counts their real bytes
(`CacheProfile` measures a probe). Only models whose caches are all plain `KVCache`s qualify.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import KVCache, QuantizedKVCache, dynamic_roll

Triple = tuple[mx.array, mx.array, mx.array]
BITS = (4, 8)


class QuantizedKV(QuantizedKVCache):
    """mlx-lm's quantized single-sequence cache, mergeable into a batch."""

    @classmethod
    def merge(cls, caches: list[QuantizedKV]) -> BatchQuantizedKV:
        return BatchQuantizedKV.merge(caches)


def _map(function: Any, triple: Triple) -> Triple:
    data, scales, biases = (function(array) for array in triple)
    return data, scales, biases


class BatchQuantizedKV:
    step = 256

    def __init__(self, left_padding: list[int], group_size: int, bits: int) -> None:
        self.keys: Triple | None = None
        self.values: Triple | None = None
        self.left_padding = mx.array(left_padding)
        self.offset = mx.array([-pad for pad in left_padding])
        self.group_size = group_size
        self.bits = bits
        self._idx = 0
        self._right_padding: mx.array | None = None

    # -- the attention's side ----------------------------------------------------------------

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[Triple, Triple]:
        prev, count = self._idx, keys.shape[2]
        if self.keys is None or self.values is None or prev + count > self.keys[0].shape[2]:
            self._grow(keys, values, prev, count)
        assert self.keys is not None and self.values is not None
        self.offset = self.offset + count
        self._idx += count
        new_keys = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        new_values = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        for stored, new in ((self.keys, new_keys), (self.values, new_values)):
            for array, part in zip(stored, new, strict=True):
                array[..., prev : self._idx, :] = part
        return self.keys_and_values()

    def _grow(self, keys: mx.array, values: mx.array, prev: int, count: int) -> None:
        batch, heads = keys.shape[:2]
        steps = (self.step + count - 1) // self.step * self.step
        fresh_keys = self._zeros(batch, heads, steps, keys.shape[3], keys.dtype)
        fresh_values = self._zeros(batch, heads, steps, values.shape[3], values.dtype)
        if self.keys is None or self.values is None:
            self.keys, self.values = fresh_keys, fresh_values
            return

        def grown(old: Triple, fresh: Triple) -> Triple:
            parts = [
                mx.concatenate([o[..., :prev, :], f], axis=2)
                for o, f in zip(old, fresh, strict=True)
            ]
            return parts[0], parts[1], parts[2]

        self.keys, self.values = grown(self.keys, fresh_keys), grown(self.values, fresh_values)

    def _zeros(self, batch: int, heads: int, length: int, dim: int, dtype: mx.Dtype) -> Triple:
        per_int = 32 // self.bits
        shape = (batch, heads, length)
        return (
            mx.zeros((*shape, dim // per_int), dtype=mx.uint32),
            mx.zeros((*shape, dim // self.group_size), dtype=dtype),
            mx.zeros((*shape, dim // self.group_size), dtype=dtype),
        )

    def keys_and_values(self) -> tuple[Triple, Triple]:
        assert self.keys is not None and self.values is not None
        idx = self._idx
        return _map(lambda a: a[..., :idx, :], self.keys), _map(
            lambda a: a[..., :idx, :], self.values
        )

    def make_mask(self, N: int, return_array: bool = False, **kwargs: Any) -> mx.array:
        return create_causal_mask(N, offset=self._idx, left_padding=self.left_padding, **kwargs)

    # -- prompts padded together -------------------------------------------------------------

    def prepare(
        self,
        *,
        left_padding: list[int] | None = None,
        lengths: list[int] | None = None,
        right_padding: list[int] | None = None,
    ) -> None:
        if left_padding is not None:
            if self.keys is not None:
                raise ValueError("left padding can only be added to an empty cache")
            self.left_padding = self.left_padding + mx.array(left_padding)
            self.offset = self.offset - mx.array(left_padding)
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(right_padding)

    def finalize(self) -> None:
        """Right-padded prompts: move the padding to the left (as BatchKVCache does)."""
        padding = self._right_padding
        if padding is None or self.keys is None or self.values is None:
            return
        self.keys = _map(lambda a: dynamic_roll(a, padding[:, None], axis=2), self.keys)
        self.values = _map(lambda a: dynamic_roll(a, padding[:, None], axis=2), self.values)
        self.offset = self.offset - padding
        self.left_padding = self.left_padding + padding
        self._right_padding = None

    # -- rows joining and leaving ------------------------------------------------------------

    def filter(self, batch_indices: mx.array) -> None:
        if self.keys is not None and self.values is not None:
            self.keys = _map(lambda a: a[batch_indices], self.keys)
            self.values = _map(lambda a: a[batch_indices], self.values)
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        shift = min(_ints(self.left_padding))
        if shift > 0:  # every row has padding on the left: drop the common part
            if self.keys is not None and self.values is not None:
                self.keys = _map(lambda a: a[..., shift:, :], self.keys)
                self.values = _map(lambda a: a[..., shift:, :], self.values)
            self._idx -= shift
            self.left_padding = self.left_padding - shift

    def extend(self, other: BatchQuantizedKV) -> None:
        """Append `other`'s rows, both right-aligned at the longer one's length."""
        if other.keys is None:
            self._append_empty(other)
            return
        if self.keys is None:
            self._adopt(other)
            return
        length = max(self._idx, other._idx)

        def aligned(cache: BatchQuantizedKV, triple: Triple) -> Triple:
            left = length - cache._idx
            return _map(
                lambda a: mx.pad(a[..., : cache._idx, :], [(0, 0), (0, 0), (left, 0), (0, 0)]),
                triple,
            )

        assert self.values is not None and other.values is not None
        keys = [aligned(self, self.keys), aligned(other, other.keys)]
        values = [aligned(self, self.values), aligned(other, other.values)]
        self.keys = _map_pair(keys)
        self.values = _map_pair(values)
        self.offset = mx.concatenate([self.offset, other.offset])
        self.left_padding = mx.concatenate(
            [self.left_padding + length - self._idx, other.left_padding + length - other._idx]
        )
        self._idx = length

    def _append_empty(self, other: BatchQuantizedKV) -> None:
        """Rows that hold nothing yet: all padding, as long as this cache."""
        rows = other.offset.shape[0]
        if self.keys is not None and self.values is not None:
            self.keys = _map(lambda a: mx.concatenate([a, _blank(a, rows)]), self.keys)
            self.values = _map(lambda a: mx.concatenate([a, _blank(a, rows)]), self.values)
        self.offset = mx.concatenate([self.offset, other.offset])
        self.left_padding = mx.concatenate([self.left_padding, other.left_padding + self._idx])

    def _adopt(self, other: BatchQuantizedKV) -> None:
        """This cache holds nothing: its rows become all padding in front of `other`'s."""
        rows = self.offset.shape[0]
        assert other.keys is not None and other.values is not None
        self.keys = _map(lambda a: mx.concatenate([_blank(a, rows), a]), other.keys)
        self.values = _map(lambda a: mx.concatenate([_blank(a, rows), a]), other.values)
        self.offset = mx.concatenate([self.offset, other.offset])
        self.left_padding = mx.concatenate([self.left_padding + other._idx, other.left_padding])
        self._idx = other._idx

    def extract(self, idx: int) -> QuantizedKV:
        cache: Any = QuantizedKV(self.group_size, self.bits)
        assert self.keys is not None and self.values is not None
        padding = _ints(self.left_padding)[idx]
        end = self._idx
        cache.keys = _map(lambda a: mx.contiguous(a[idx : idx + 1, :, padding:end]), self.keys)
        cache.values = _map(lambda a: mx.contiguous(a[idx : idx + 1, :, padding:end]), self.values)
        cache.offset = end - padding
        return cache

    @classmethod
    def merge(cls, caches: list[QuantizedKV]) -> BatchQuantizedKV:
        group_size, bits = caches[0].group_size, caches[0].bits
        lengths = [cache.offset if cache.keys is not None else 0 for cache in caches]
        longest = max(lengths)
        padding = [longest - length for length in lengths]
        merged = cls(padding, group_size, bits)
        if longest == 0:
            return merged
        sample = next(cache for cache in caches if cache.keys is not None)

        def stacked(select: Any) -> Triple:
            parts = []
            for position in range(3):
                rows = []
                for cache, pad, length in zip(caches, padding, lengths, strict=True):
                    like = select(sample)[position]
                    row = mx.zeros((1, like.shape[1], longest, like.shape[3]), like.dtype)
                    if length:
                        row[:, :, pad:] = select(cache)[position][..., :length, :]
                    rows.append(row)
                parts.append(mx.concatenate(rows))
            return parts[0], parts[1], parts[2]

        merged.keys = stacked(lambda cache: cache.keys)
        merged.values = stacked(lambda cache: cache.values)
        merged.offset = merged.offset + longest
        merged._idx = longest
        return merged

    # -- what the engine asks of every cache --------------------------------------------------

    @property
    def state(self) -> tuple[Any, ...]:
        return self.keys, self.values, self.offset, self.left_padding

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(self._idx, n)
        self._idx -= n
        self.offset = self.offset - n
        return n

    def size(self) -> int:
        return self._idx

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        return sum(int(a.nbytes) for a in (*self.keys, *self.values))


def _ints(array: mx.array) -> list[int]:
    values: Any = array.tolist()
    return [int(value) for value in values]


def _blank(like: mx.array, rows: int) -> mx.array:
    """`rows` rows of zeros shaped as `like`'s (padding rows)."""
    return mx.zeros((rows, *like.shape[1:]), like.dtype)


def _map_pair(pair: list[Triple]) -> Triple:
    first, second = pair
    parts = [mx.concatenate([a, b]) for a, b in zip(first, second, strict=True)]
    return parts[0], parts[1], parts[2]


def install(model: Any, bits: int, group_size: int) -> None:
    """Make `model.make_cache` build quantized caches, or ValueError naming why it cannot."""
    if bits not in BITS:
        raise ValueError(f"kv_bits must be one of {BITS}, got {bits}")
    from mlx_lm.models.cache import make_prompt_cache

    kinds = {type(cache).__name__ for cache in make_prompt_cache(model)}
    if kinds != {KVCache.__name__}:
        raise ValueError(
            f"kv_bits needs plain KV caches; this model's are {sorted(kinds)} (sliding windows, "
            "states and chunked caches are not quantized)"
        )
    # A block fused whole (fused_projections.LeanBlock) holds the head size itself.
    attentions = [getattr(layer, "self_attn", layer) for layer in model.layers]
    head_dims = {int(getattr(attention, "head_dim", 0) or 0) for attention in attentions}
    if any(dim % group_size for dim in head_dims if dim):
        raise ValueError(f"kv_group_size {group_size} does not divide the head size {head_dims}")
    layers = len(model.layers)
    model.make_cache = lambda: [QuantizedKV(group_size, bits) for _ in range(layers)]
