"""A vision-language model's language half as the text scheduler sees an mlx-lm model.

`TextModel(tokens, cache=..., inputs_embeds=..., position_ids=...)` returns logits, and has
`layers` and `make_cache`: engines/llm's scheduler prefills and decodes it like any mlx-lm
model, so image rows and text-only rows share one continuous batch. mlx-vlm's language models
are mlx-lm-style; what differs is kept here:

- Their forward returns a `LanguageModelOutput`: its `logits` are returned.
- Qwen2-VL / Qwen2.5-VL (`MROPE_FAMILIES`) place tokens by 3-D mRoPE position ids: a prompt's
  image tokens take fewer positions than tokens, so its text after the images runs
  `position_delta` (≤ 0) behind the cache offset. mlx-vlm keeps that delta on the model object
  (one sequence at a time); here each sequence's delta lives in its own cache
  (`MRopeKVCache`, and per row in `MRopeBatchKVCache`, kept through merge / filter / extend /
  extract), and every forward passes explicit position ids: a prompt's own (from the model's
  `get_rope_index`) while its prompt is prefilled, else offset + delta per row, as mlx-vlm's
  decode computes them. A text-only row has delta 0: the positions of mlx-lm's Qwen2.

Invariant: engine thread only (it builds MLX arrays).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, KVCache

from engines.readback import host_list

MROPE_FAMILIES = frozenset({"qwen2_vl", "qwen2_5_vl"})


class MRopeKVCache(KVCache):
    """A KV cache whose next position is `offset + position_delta`."""

    position_delta = 0

    @classmethod
    def merge(cls, caches: list[Any]) -> MRopeBatchKVCache:
        return MRopeBatchKVCache.of(
            BatchKVCache.merge(caches), [cache.position_delta for cache in caches]
        )


class MRopeBatchKVCache(BatchKVCache):
    """mlx-lm's BatchKVCache with each row's position delta."""

    deltas: mx.array

    @classmethod
    def of(cls, batch: BatchKVCache, deltas: list[int]) -> MRopeBatchKVCache:
        cache = cls.__new__(cls)
        cache.__dict__.update(batch.__dict__)
        cache.deltas = mx.array(deltas, dtype=mx.int32)
        return cache

    def filter(self, batch_indices: Any) -> None:
        super().filter(batch_indices)
        self.deltas = self.deltas[batch_indices]

    def extend(self, other: Any) -> None:
        super().extend(other)
        self.deltas = mx.concatenate([self.deltas, other.deltas])

    def extract(self, idx: int) -> MRopeKVCache:
        single = MRopeKVCache()
        single.__dict__.update(super().extract(idx).__dict__)
        single.position_delta = int(host_list(self.deltas)[idx])
        return single


def set_position_delta(cache: list[Any], delta: int) -> None:
    """Give a single sequence's cache its prompt's delta (0: text only)."""
    for layer in cache:
        layer.position_delta = delta


class TextModel:
    def __init__(self, vlm: Any) -> None:
        self.vlm = vlm
        self.language = vlm.language_model
        self.family = str(vlm.config.model_type)
        self.mrope = self.family in MROPE_FAMILIES
        self.layers = self.language.layers

    def parameters(self) -> Any:
        """The whole model's (its weights count the vision tower too)."""
        return self.vlm.parameters()

    def make_cache(self) -> list[Any]:
        if self.mrope:
            return [MRopeKVCache() for _ in self.layers]
        make = getattr(self.language, "make_cache", None)
        return list(make()) if make is not None else [KVCache() for _ in self.layers]

    def __call__(
        self,
        inputs: mx.array,
        cache: list[Any] | None = None,
        inputs_embeds: mx.array | None = None,
        position_ids: mx.array | None = None,
    ) -> mx.array:
        extra: dict[str, Any] = {}
        if self.mrope:
            extra["position_ids"] = (
                position_ids if position_ids is not None else _mrope_positions(cache, inputs)
            )
        output = self.language(inputs, inputs_embeds=inputs_embeds, cache=cache, **extra)
        return output.logits


def _mrope_positions(cache: list[Any] | None, inputs: mx.array) -> mx.array:
    """(3, rows, length) position ids continuing each row's sequence: offset + delta."""
    rows, length = inputs.shape
    layer = cache[0] if cache else None
    if isinstance(layer, MRopeBatchKVCache):
        start = layer.offset + layer.deltas
    elif layer is not None:
        start = mx.array([layer.offset + getattr(layer, "position_delta", 0)] * rows)
    else:
        start = mx.zeros((rows,), dtype=mx.int32)
    positions = start[:, None] + mx.arange(length)[None]
    return mx.broadcast_to(positions[None], (3, rows, length))
