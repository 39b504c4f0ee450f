"""What a model's caches can do, asked once at load: the engine never branches on cache classes.

mlx-lm builds one cache per layer (`make_prompt_cache`); its kinds differ in what they allow:

| kind   | mlx-lm classes                 | memory per row     | batches via          | trims   |
|--------|--------------------------------|--------------------|----------------------|---------|
| kv     | KVCache                        | grows with tokens  | BatchKVCache         | yes     |
| qkv    | QuantizedKV (`kv_bits`)        | grows, in bits     | BatchQuantizedKV     | yes     |
| window | RotatingKVCache (sliding)      | up to its window   | BatchRotatingKVCache | not full |
| state  | ArraysCache (SSM, linear attn) | constant           | itself               | no      |
| (list) | CacheList: several per layer   | sum of its parts   | itself               | if all do |
| other  | ChunkedKVCache, a family's own | grows with tokens  | none: sequential     | ask it  |

`CacheProfile.of(probe)` reads this from a probe cache filled with a couple of tokens:
whether every layer can be merged into a batch and the model's family runs batches right
(`batchable`; else the engine serves one sequence at a time), whether every layer is a plain
unbounded KV cache that trims exactly (`plain`: the
only kind prefill passes may pad and trim, and the only kind with the joint left-padded prefill),
and the memory a row of `tokens` tokens takes (`row_bytes`), which admission projects.

Invariant: functions here only call the caches' own methods (`merge`, `extend`, `filter`,
`extract`, `is_trimmable`, `trim`, `nbytes`); they run on the engine thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx

STEP = 256  # mlx-lm's KV caches grow in steps of this many tokens


def _parts(layer: Any) -> list[Any]:
    """A layer's caches: itself, or the members of a CacheList."""
    members = getattr(layer, "caches", None)
    return [p for member in members for p in _parts(member)] if members is not None else [layer]


def kind_of(part: Any) -> str:
    """'kv', 'qkv', 'window', 'state' or 'other' (the module table), from what the cache holds."""
    if hasattr(part, "bits") and hasattr(part, "merge"):  # quantized_cache.QuantizedKV
        return "qkv"
    if hasattr(part, "cache") and not hasattr(part, "keys"):
        return "state"
    if not hasattr(part, "merge"):
        return "other"
    if hasattr(part, "max_size"):
        return "window"
    return "kv" if hasattr(part, "keys") else "other"


def layer_kinds(probe: list[Any]) -> list[str]:
    """Every layer's kind(s), e.g. ['state+kv', 'kv'] (for logs and docs)."""
    return ["+".join(kind_of(part) for part in _parts(layer)) for layer in probe]


# Families whose caches merge but whose batches are not exact (measured on the tiny models of
# tests/families.py, greedy, against mlx-lm's `generate` of each prompt alone): served one
# sequence at a time. Why, per family:
_MLX_LM_WRONG = "mlx-lm's own batch_generate differs from generate: padded rows' masks or states"
_MLX_LM_RAISES = "mlx-lm's own batch_generate raises: its attention mask does not fit a batch"
SEQUENTIAL_FAMILIES: dict[str, str] = {
    "afm7": _MLX_LM_WRONG,
    "bailing_moe_linear": _MLX_LM_WRONG,
    "gemma2": _MLX_LM_RAISES,
    "gpt_bigcode": _MLX_LM_RAISES,
    "jamba": _MLX_LM_WRONG,
    "longcat_flash_ngram": _MLX_LM_WRONG,
    "mamba": _MLX_LM_WRONG,
    "olmo_hybrid": _MLX_LM_WRONG,
}


def family(model: Any) -> str:
    """The mlx-lm module (model family) a model was built from, e.g. 'gemma3_text'."""
    return type(model).__module__.rpartition(".")[2]


@dataclass(frozen=True)
class CacheProfile:
    """The memory and abilities of one model's caches (identical for every sequence)."""

    kinds: tuple[str, ...]  # per layer, as `layer_kinds`
    per_token: int  # bytes per cached token, summed over the KV layers (unbounded)
    window_per_token: tuple[tuple[int, int], ...]  # (window tokens, bytes per token) per window
    constant: int  # bytes per row that do not depend on its length (state caches)
    other_per_token: int = 0  # bytes per token of other kinds (projected with a step of slack)
    sequential_family: str = ""  # why the family is served one sequence at a time, if it is

    @property
    def batchable(self) -> bool:
        """Every layer can be merged into a batch and the family runs batches right (else: one
        sequence at a time)."""
        return not self.sequential_family and all("other" not in kind for kind in self.kinds)

    @property
    def sequential_reason(self) -> str:
        """Why the engine serves this model one sequence at a time ('' when it batches)."""
        if self.sequential_family:
            return self.sequential_family
        if not self.batchable:
            kinds = ", ".join(sorted(set(self.kinds)))
            return f"its caches ({kinds}) include a kind mlx-lm cannot batch"
        return ""

    @property
    def plain(self) -> bool:
        """Every layer a plain KV cache: trims exactly, may be padded, has no window or state.
        (Quantized caches are not plain: no speculation, CPU decode rewrites or query buckets.)"""
        return all(kind == "kv" for kind in self.kinds)

    def row_bytes(self, tokens: int) -> int:
        """Memory of one row holding `tokens` tokens (KV allocated in steps of 256 tokens)."""
        rounded = -(-tokens // STEP) * STEP
        windows = sum(min(rounded, window) * size for window, size in self.window_per_token)
        # Other kinds (chunked attention) reallocate as they drop their front: one more step.
        others = (rounded + STEP) * self.other_per_token
        return rounded * self.per_token + windows + self.constant + others

    @classmethod
    def of(cls, probe: list[Any], model: Any = None) -> CacheProfile:
        """Measure a probe cache that a forward pass of `model` has filled with a few tokens."""
        per_token = constant = other = 0
        windows: list[tuple[int, int]] = []
        for part in (part for layer in probe for part in _parts(layer)):
            kind = kind_of(part)
            if kind == "state":
                constant += int(part.nbytes)
                continue
            if not hasattr(part, "keys"):  # a family's own cache (deepseek_v41's LayerCache)
                other += -(-int(part.nbytes) // max(1, int(getattr(part, "offset", 0) or 0)))
                continue
            keys, values = part.keys, part.values
            if isinstance(keys, tuple):  # quantized: (data, scales, biases)
                size = sum(int(a.nbytes) // int(a.shape[2]) for a in (*keys, *values))
            else:
                size = (int(keys.nbytes) + int(values.nbytes)) // int(keys.shape[2])
            if kind == "window":
                windows.append((int(part.max_size), size))
            elif kind in ("kv", "qkv"):
                per_token += size
            else:
                other += size
        why = SEQUENTIAL_FAMILIES.get(family(model), "") if model is not None else ""
        return cls(tuple(layer_kinds(probe)), per_token, tuple(windows), constant, other, why)


def plain(cache: list[Any]) -> bool:
    """Every layer of this (single or batch) cache a plain KV cache (`CacheProfile.plain`)."""
    return all(kind_of(part) == "kv" for layer in cache for part in _parts(layer))


def merge(caches: list[list[Any]]) -> list[Any]:
    """One batch cache per layer from single-sequence caches (each cache's own `merge`)."""
    return [caches[0][i].merge([cache[i] for cache in caches]) for i in range(len(caches[0]))]


def trimmable(cache: list[Any]) -> bool:
    """Every layer can be trimmed back (a full sliding window or an SSM state cannot). A chunked
    cache that has dropped its front says it can, but the front it would need again is gone."""
    return all(
        layer.is_trimmable() and not getattr(part, "start_position", 0)
        for layer in cache
        for part in _parts(layer)
    )


def offset(cache: list[Any]) -> int:
    """Tokens a single-sequence cache holds: those of a layer that counts them."""
    for part in (part for layer in cache for part in _parts(layer)):
        if isinstance(getattr(part, "offset", None), int):
            return int(part.offset)
    raise ValueError("no layer of this cache counts its tokens")


def nbytes(cache: list[Any]) -> int:
    return sum(int(layer.nbytes) for layer in cache)


def evaluate(cache: list[Any]) -> None:
    """Compute a cache's arrays now (releases the graphs and buffers they were built from)."""
    mx.eval([array for layer in cache for array in arrays(layer)])


def launch(cache: list[Any]) -> None:
    """Have a cache's arrays computed next on the stream, without waiting for them: like
    `evaluate` it lets go of the graphs and buffers they were built from once they are done, but
    the host goes on (a wait would also wait for the decode step in flight)."""
    mx.async_eval([array for layer in cache for array in arrays(layer)])


def arrays(layer: Any) -> list[mx.array]:
    """The arrays a layer cache holds (its `state` may also hold ints, None and class names)."""
    found: list[mx.array] = []
    stack: list[Any] = [layer.state]
    while stack:
        item = stack.pop()
        if isinstance(item, mx.array):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found
