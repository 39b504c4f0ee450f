"""RaggedKVCache: a batch KV cache whose rows hold different numbers of tokens, each row trimmed
on its own — what speculative decoding needs when rows accept different numbers of drafts.

mlx-lm's `BatchKVCache` left-pads its rows so that every row ends at the same index: all rows
grow together and `trim` shortens them all alike. After a verification pass, row a may keep 5 of
its new positions and row b 1; left-padded, b's rejected tail would have to be rolled into its
padding (a copy of the whole cache every step). Here rows are right-aligned instead: row i's
tokens sit at positions [0, length_i), the buffer beyond is unused, new tokens are written at
each row's own length (a scatter), and rejecting row i's last r tokens is `length_i -= r`
(no copy). Attention masks every key at or beyond a row's length.

It offers what mlx-lm's attention layers call (`offset` — the rows' lengths, which are also
their next tokens' rotary positions — `update_and_fetch`, `make_mask`, `state`) and what the
DecodeBatch calls on batch caches (`merge`, `extend`, `filter`, `extract`, `trim`). Only plain
unbounded KV layers (`CacheProfile.plain`) are ever made ragged.

Invariant: `lengths` (host ints) is the truth; `offset` is derived from it for each pass.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from engines.readback import host_list

STEP = 256  # the buffer grows in steps of this many positions, as mlx-lm's caches do


class RaggedKVCache:
    def __init__(self, keys: mx.array, values: mx.array, lengths: list[int]) -> None:
        self.keys = keys  # (rows, kv heads, capacity, head dim)
        self.values = values
        self.lengths = lengths

    # -- what attention layers call ----------------------------------------------------------

    @property
    def offset(self) -> mx.array:
        return mx.array(self.lengths)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Write each row's new positions after its own tokens; return every row's keys and
        values up to the longest row (positions past a row's end are masked)."""
        new = keys.shape[2]
        end = max(self.lengths) + new
        self._reserve(end)
        if len(set(self.lengths)) == 1:  # rows in lockstep: one slice
            start = self.lengths[0]
            self.keys[..., start : start + new, :] = keys
            self.values[..., start : start + new, :] = values
        else:
            positions = (mx.array(self.lengths)[:, None] + mx.arange(new))[:, None, :, None]
            self.keys = mx.put_along_axis(
                self.keys, mx.broadcast_to(positions, keys.shape), keys, axis=2
            )
            self.values = mx.put_along_axis(
                self.values, mx.broadcast_to(positions, values.shape), values, axis=2
            )
        self.lengths = [length + new for length in self.lengths]
        return self.keys[..., :end, :], self.values[..., :end, :]

    def make_mask(self, N: int, return_array: bool = False, window_size: Any = None) -> Any:
        """(rows, 1, N, longest + N): query q of row i sees keys [0, length_i + q]."""
        if window_size is not None:
            raise ValueError("a ragged cache has no sliding window")
        if len(set(self.lengths)) == 1 and not return_array:  # lockstep: plain causal
            return None if N == 1 else "causal"
        end = max(self.lengths) + N
        last = mx.array(self.lengths)[:, None] + mx.arange(N)  # (rows, N): each query's position
        return (mx.arange(end)[None, None, :] <= last[:, :, None])[:, None]

    @property
    def state(self) -> tuple[mx.array, mx.array]:
        return self.keys, self.values

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes) + int(self.values.nbytes)

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Every row forgets its last `n` tokens (at most as many as the shortest holds)."""
        n = min(n, min(self.lengths))
        self.lengths = [length - n for length in self.lengths]
        return n

    def rewind(self, drop: list[int]) -> None:
        """Row i forgets its last `drop[i]` tokens (rejected drafts, padding)."""
        self.lengths = [length - d for length, d in zip(self.lengths, drop, strict=True)]

    # -- what the DecodeBatch calls ----------------------------------------------------------

    @classmethod
    def merge(cls, caches: list[Any]) -> RaggedKVCache:
        """One ragged cache from single-sequence KV caches (KVCache or RaggedKVCache rows)."""
        parts = [cache if isinstance(cache, RaggedKVCache) else _one(cache) for cache in caches]
        capacity = _rounded(max(max(p.lengths) for p in parts))
        keys = mx.concatenate([_widened(p.keys, capacity) for p in parts])
        values = mx.concatenate([_widened(p.values, capacity) for p in parts])
        return cls(keys, values, [length for p in parts for length in p.lengths])

    @classmethod
    def from_batch(cls, cache: Any, rows: int) -> RaggedKVCache:
        """A ragged copy of a left-padded mlx-lm batch cache (its rows' `extract`s)."""
        return cls.merge([cache.extract(row) for row in range(rows)])

    def extend(self, other: RaggedKVCache) -> None:
        capacity = max(self.keys.shape[2], other.keys.shape[2])
        self.keys = mx.concatenate([_widened(self.keys, capacity), _widened(other.keys, capacity)])
        self.values = mx.concatenate(
            [_widened(self.values, capacity), _widened(other.values, capacity)]
        )
        self.lengths = self.lengths + other.lengths

    def filter(self, rows: mx.array) -> None:
        """Keep only `rows` (in order); the buffer shrinks to what the longest kept row needs."""
        kept = host_list(rows)
        self.lengths = [self.lengths[row] for row in kept]
        capacity = _rounded(max(self.lengths))
        self.keys = self.keys[rows, :, :capacity]
        self.values = self.values[rows, :, :capacity]

    def extract(self, row: int) -> KVCache:
        """A single-sequence copy of one row."""
        cache = KVCache()
        length = self.lengths[row]
        cache.keys = mx.contiguous(self.keys[row : row + 1, :, :length])
        cache.values = mx.contiguous(self.values[row : row + 1, :, :length])
        cache.offset = length
        return cache

    def _reserve(self, end: int) -> None:
        if end > self.keys.shape[2]:
            capacity = _rounded(end)
            self.keys = _widened(self.keys, capacity)
            self.values = _widened(self.values, capacity)


def _rounded(tokens: int) -> int:
    return max(STEP, -(-tokens // STEP) * STEP)


def _widened(array: mx.array, capacity: int) -> mx.array:
    """`array` (rows, heads, positions, dim) with exactly `capacity` positions."""
    have = array.shape[2]
    if have >= capacity:
        return array[:, :, :capacity]
    return mx.pad(array, [(0, 0), (0, 0), (0, capacity - have), (0, 0)])


def _one(cache: Any) -> RaggedKVCache:
    """A one-row ragged view of a single-sequence KVCache."""
    length = int(cache.offset)
    return RaggedKVCache(cache.keys[..., :length, :], cache.values[..., :length, :], [length])
