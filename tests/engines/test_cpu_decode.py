"""The CPU decode rewrites compute exactly what mlx-lm's model computes without them.

Each test runs the same model on copies of the same KV caches twice: inside `decode_step` (the
rewrites act) and outside it (the original rope and attention run), and compares outputs bit for
bit; the rewrites must also have really acted (a counter on the wrapped code)."""

from __future__ import annotations

import copy
import sys
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

from engines.llm import caches as cache_ops
from engines.llm import cpu_decode, native_softmax
from engines.llm.cpu_decode import (
    PackedPositions,
    PromptPasses,
    TabledRoPE,
    decode_step,
    install,
)
from engines.llm.engine import LLMEngine
from engines.llm.ragged_cache import RaggedKVCache
from tests.tiny import tiny_model


def _prefilled(model: Any, prompts: list[list[int]]) -> list[Any]:
    """Per-layer caches holding `prompts`: a plain cache for one, a left-padded batch for more."""
    singles = []
    for prompt in prompts:
        cache = make_prompt_cache(model)
        mx.eval(model(mx.array([prompt]), cache=cache))
        singles.append(cache)
    if len(prompts) == 1:
        return singles[0]
    return [BatchKVCache.merge([cache[i] for cache in singles]) for i in range(len(singles[0]))]


class _Counting:
    """Counts the calls that reach a wrapped function."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("lengths", [[5], [3, 9, 6]], ids=["solo", "batch"])
@pytest.mark.parametrize("width", [1, 4], ids=["decode", "verify"])
def test_decode_step_equals_the_original_bit_for_bit(
    arch: str, lengths: list[int], width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode step (one new token per row) and a verification pass (several: the pending
    token and drafts, under a causal mask or the batch cache's padding mask)."""
    model = tiny_model(arch)
    install(model)
    counting = _Counting(mx.fast.scaled_dot_product_attention)  # what mlx-lm's attention calls
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention", counting)
    ropes = _Counting(mx.fast.rope)  # what nn.RoPE calls
    monkeypatch.setattr(mx.fast, "rope", ropes)
    prompts = [[(7 * row + i) % 50 + 3 for i in range(n)] for row, n in enumerate(lengths)]
    caches = _prefilled(model, prompts)
    tokens = mx.array([[11 + row + j for j in range(width)] for row in range(len(lengths))])
    for _ in range(3):  # several steps: positions move, caches grow
        reference_caches = copy.deepcopy(caches)
        counting.calls = ropes.calls = 0
        expected = model(tokens, cache=reference_caches)
        # Outside a step: the original attention and rope (queries and keys), every layer.
        assert (counting.calls, ropes.calls) == (len(caches), 2 * len(caches))
        offsets = caches[0].offset
        counting.calls = ropes.calls = 0
        with decode_step(offsets, width):
            actual = model(tokens, cache=caches)
        assert (counting.calls, ropes.calls) == (0, 0)  # inside: the rewrites, every layer
        mx.eval(expected, actual)
        assert mx.array_equal(actual, expected).item()
        tokens = mx.argmax(actual, axis=-1)


def test_install_wraps_each_rope_once_and_the_attention_once() -> None:
    model = tiny_model("llama")
    install(model)
    install(tiny_model("llama"))  # a second model of the same module
    assert all(isinstance(layer.self_attn.rope, TabledRoPE) for layer in model.model.layers)
    wrappers = [m for _, m in model.named_modules() if isinstance(m, TabledRoPE)]
    assert len(wrappers) == len(model.model.layers)  # no wrapper wrapped again
    function = sys.modules[type(model).__module__].scaled_dot_product_attention
    assert not hasattr(function.original, "original")  # not wrapped twice


def test_models_of_other_modules_are_left_alone() -> None:
    model = tiny_model("llama")
    model.__class__ = type("Model", (type(model),), {"__module__": __name__})
    assert not install(model)
    assert all(type(layer.self_attn.rope) is nn.RoPE for layer in model.model.layers)


def test_partial_rotary_keeps_the_unrotated_dimensions() -> None:
    rope = nn.RoPE(8, base=500.0, scale=0.5)
    x = mx.random.normal((3, 2, 1, 12), key=mx.random.key(1))
    offsets = mx.array([4, 17, 0])
    expected = rope(x, offset=offsets)
    with decode_step(offsets):
        actual = TabledRoPE(rope)(x, offset=offsets)
    assert mx.array_equal(actual, expected).item()


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_grouped_attention_equals_the_fallback(mask_kind: str) -> None:
    keys_ = mx.random.split(mx.random.key(2), 4)
    q = mx.random.normal((3, 6, 1, 8), key=keys_[0])
    k = mx.random.normal((3, 2, 10, 8), key=keys_[1])
    v = mx.random.normal((3, 2, 10, 8), key=keys_[2])
    allowed = mx.random.uniform(shape=(3, 1, 1, 10), key=keys_[3]) > 0.3
    allowed[..., -1] = True
    mask = {
        "none": None,
        "bool": allowed,
        "additive": mx.where(allowed, 0.0, -1e9).astype(mx.float32),
    }[mask_kind]
    calls = _Counting(
        lambda q, k, v, cache, scale, mask, sinks=None: mx.fast.scaled_dot_product_attention(
            q, k, v, scale=scale, mask=mask
        )
    )
    attention = cpu_decode.grouped_decode_attention(calls)
    expected = attention(q, k, v, cache=None, scale=0.3, mask=mask)  # no step: the original
    assert calls.calls == 1
    with decode_step(mx.array([1, 2, 3])):
        actual = attention(q, k, v, cache=None, scale=0.3, mask=mask)
    assert calls.calls == 1
    assert mx.array_equal(actual, expected).item()


def test_outside_its_shapes_a_step_defers_to_the_original() -> None:
    """A pass of several tokens, or of other rows, inside a step still runs the original."""
    rope = nn.RoPE(8)
    wrapped = TabledRoPE(rope)
    x = mx.random.normal((2, 2, 4, 8), key=mx.random.key(3))
    with decode_step(mx.array([5, 6])):
        assert mx.array_equal(wrapped(x, offset=3), rope(x, offset=3)).item()
        single = mx.random.normal((1, 2, 1, 8), key=mx.random.key(4))
        assert mx.array_equal(wrapped(single, offset=9), rope(single, offset=9)).item()


async def test_a_cpu_engine_decodes_with_the_rewrites(engine: LLMEngine) -> None:
    """The engine fixture runs on the CPU: its model carries the wrappers and its decode steps
    are built inside `decode_step` (the tests above show what that computes)."""
    assert engine.scheduler is not None
    layers = engine.scheduler.model.model.layers
    assert all(isinstance(layer.self_attn.rope, TabledRoPE) for layer in layers)
    assert engine.scheduler is not None and engine.scheduler.batch._cpu_decode


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("case", ["fresh", "resumed", "left_padded"])
def test_prompt_passes_equal_the_original_bit_for_bit(
    arch: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt chunk on a fresh cache, one resuming after cached tokens, and several prompts
    left-padded into a batch cache (as `prefill_together` builds it), through `PromptPasses`
    (the rewrites, every layer; every softmax through the native kernel where it runs) and
    through the model itself."""
    model = tiny_model(arch)
    install(model)
    monkeypatch.setattr(native_softmax, "MIN_ELEMENTS", 0)
    counting = _Counting(mx.fast.scaled_dot_product_attention)
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention", counting)
    if case == "left_padded":
        lengths = [9, 4, 7]
        caches = cache_ops.merge([make_prompt_cache(model) for _ in lengths])
        for layer in caches:
            layer.prepare(left_padding=[9 - n for n in lengths])
        tokens = mx.array(
            [
                [0] * (9 - n) + [(5 * r + i) % 40 + 3 for i in range(n)]
                for r, n in enumerate(lengths)
            ]
        )
    elif case == "resumed":
        caches = _prefilled(model, [[4, 9, 16, 25, 36]])
        tokens = mx.array([[3 + (7 * i) % 45 for i in range(11)]])
    else:
        caches = make_prompt_cache(model)
        tokens = mx.array([[3 + (7 * i) % 45 for i in range(11)]])
    counting.calls = 0
    reference_caches = copy.deepcopy(caches)
    expected = model(tokens, cache=reference_caches)
    assert counting.calls == len(caches)
    counting.calls = 0
    actual = PromptPasses(model)(tokens, cache=caches)
    assert counting.calls == 0  # the grouped attention ran in every layer
    mx.eval(expected, actual)
    assert mx.array_equal(actual, expected).item()
    for mine, theirs in zip(caches, reference_caches, strict=True):
        assert mx.array_equal(mine.state[0], theirs.state[0]).item()  # keys rotated alike


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_packed_verification_pass_equals_the_padded_one(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows padded to the longest draft (ragged caches, as speculation runs them): with `used`
    given, the MLPs run on the used positions only and the head
    computes their logits alone; those logits, and every used position's keys, equal the
    padded pass's up to the rounding of a matrix product over fewer rows (BLAS sums in an order
    that depends on the rows: the padded pass is not bit for bit a one-token step either), and
    pick the same greedy tokens."""
    model = tiny_model(arch)
    install(model)
    inner_calls: list[tuple[int, ...]] = []
    first_mlp = model.model.layers[0].mlp
    assert isinstance(first_mlp, PackedPositions)
    original_mlp = first_mlp.inner
    monkeypatch.setattr(
        first_mlp, "inner", lambda x: inner_calls.append(x.shape) or original_mlp(x)
    )

    rows = []
    for length in (6, 11, 8):
        cache = make_prompt_cache(model)
        mx.eval(model(mx.array([[(3 * length + i) % 40 + 2 for i in range(length)]]), cache=cache))
        rows.append(cache)
    caches = [RaggedKVCache.merge([row[i] for row in rows]) for i in range(len(rows[0]))]
    used, width = [3, 1, 5], 5
    tokens = mx.array([[7 + r + 2 * j for j in range(width)] for r in range(3)])
    padded_caches = copy.deepcopy(caches)
    with decode_step(caches[0].offset, width) as step:
        padded = model(tokens, cache=padded_caches)
    assert not step.packed_logits and inner_calls[-1] == (3, width, 64)
    with decode_step(caches[0].offset, width, used) as step:
        packed = model(tokens, cache=caches)
    assert step.packed_logits and inner_calls[-1] == (1, sum(used), 64)
    mx.eval(padded, packed)
    assert packed.shape == (1, sum(used), padded.shape[-1])
    starts = [0, 3, 4]
    for row, (start, n) in enumerate(zip(starts, used, strict=True)):
        mine, theirs = packed[0, start : start + n], padded[row, :n]
        assert mx.allclose(mine, theirs, rtol=1e-5, atol=1e-4).item()
        assert mx.array_equal(mx.argmax(mine, axis=-1), mx.argmax(theirs, axis=-1)).item()
        for layer, reference in zip(caches, padded_caches, strict=True):
            end = layer.lengths[row] - width + n
            got, expected = layer.keys[row, :, :end], reference.keys[row, :, :end]
            assert mx.allclose(got, expected, rtol=1e-5, atol=1e-5).item()
