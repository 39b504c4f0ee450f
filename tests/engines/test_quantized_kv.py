"""Quantized KV caches (`kv_bits`) in the batch, against mlx-lm's own QuantizedKVCache.

A tiny random float32 llama with 32-wide heads (quantization groups of 32): greedy output through
the engine with `kv_bits` 8 and 4 equals mlx-lm's `generate_step` over `QuantizedKVCache`s, alone,
with three prompts of different lengths in one batch (merged, padded, filtered as rows finish),
and for a follow-up turn resumed from the prefix cache; admission counts the quantized bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import QuantizedKVCache
from mlx_lm.models.llama import Model, ModelArgs
from mlx_lm.utils import load

from engines.llm.engine import LLMEngine
from engines.llm.limits import ROW_TOKENS
from engines.types import ChatLimits, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from tests.tiny import EOS_ID, save_model_dir, tiny_config

GROUP = 32
PROMPTS = [[(5 * i + 3 * j) % 240 + 7 for j in range(18 + 7 * i)] for i in range(3)]
TOKENS = 10


def quantizable_model_dir(directory: Path) -> Path:
    """tests/tiny.py's llama with heads of GROUP dimensions (MLX quantizes groups of 32 up)."""
    config = {**tiny_config("llama"), "head_dim": GROUP}
    mx.random.seed(3)
    model = Model(ModelArgs.from_dict(config))
    head = model.lm_head.weight
    model.lm_head.weight = mx.random.normal(head.shape, key=mx.random.key(4))
    directory = save_model_dir(model, "llama", directory)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantizable_model_dir(tmp_path_factory.mktemp("qkv") / "tiny-qkv")


@pytest.fixture(params=[8, 4], ids=["8bit", "4bit"])
async def engine(model_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[LLMEngine]:
    limits = ChatLimits(kv_bits=request.param, kv_group_size=GROUP)
    engine = LLMEngine("tiny-qkv", model_dir, prefill_chunk=64, limits=limits)
    engine.start()
    await engine.wait_loaded()
    yield engine
    engine.stop()


def reference(model_dir: Path, prompt: list[int], bits: int) -> list[int]:
    """mlx-lm's greedy continuation over its own quantized caches."""
    model, _ = load(str(model_dir))
    cache = [QuantizedKVCache(GROUP, bits) for _ in model.layers]
    steps = generate_step(mx.array(prompt), model, max_tokens=TOKENS, prompt_cache=cache)
    tokens = [int(token) for token, _ in steps]
    return tokens[: tokens.index(EOS_ID)] if EOS_ID in tokens else tokens  # the engine stops


async def generate(engine: LLMEngine, prompt: list[int], tag: str) -> tuple[list[int], int]:
    request = GenerationRequest(tag, prompt, TOKENS, SamplingParams(temperature=0.0))
    tokens: list[int] = []
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent):
            tokens += event.token_ids
        elif isinstance(event, FinishEvent):
            return tokens, event.usage.cached_tokens
    raise AssertionError("the stream ended without a FinishEvent")


async def test_alone_batched_and_resumed_equal_mlx_lm(engine: LLMEngine, model_dir: Path) -> None:
    bits = engine.limits.kv_bits
    assert bits is not None and engine.profile is not None
    assert set(engine.profile.kinds) == {"qkv"}
    expected = [reference(model_dir, prompt, bits) for prompt in PROMPTS]
    alone, _ = await generate(engine, PROMPTS[0], "alone")
    assert alone == expected[0]
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    engine.largest_batch = 0
    together = await asyncio.gather(*(generate(engine, p, f"b{i}") for i, p in enumerate(PROMPTS)))
    assert engine.largest_batch == 3
    assert [tokens for tokens, _ in together] == expected
    follow_up = PROMPTS[2] + expected[2] + [50, 60]
    resumed, cached = await generate(engine, follow_up, "turn-2")
    assert cached >= len(PROMPTS[2])
    assert resumed and resumed == reference(model_dir, follow_up, bits)


async def test_admission_counts_quantized_bytes(engine: LLMEngine, model_dir: Path) -> None:
    plain = LLMEngine("tiny-plain", model_dir, limits=ChatLimits())
    plain.start()
    await plain.wait_loaded()
    try:
        assert plain.profile is not None and engine.profile is not None
        budget = 64 * 2**20
        rows = budget // engine.profile.row_bytes(ROW_TOKENS)
        plain_rows = budget // plain.profile.row_bytes(ROW_TOKENS)
    finally:
        plain.stop()
    # float32 values of 32 → 32 bits-wide codes + a float32 scale and bias per group of 32
    bits = engine.limits.kv_bits or 0
    assert rows / plain_rows == pytest.approx(32 * 4 / (32 * bits / 8 + 8), rel=0.02)
    assert engine.stats().kv_bits == bits


async def test_rows_joining_a_running_batch_and_leaving_early(
    engine: LLMEngine, model_dir: Path
) -> None:
    """Rows join while others decode (`extend`), and leave at different steps (`filter`, then
    back to a single-sequence cache)."""
    bits = engine.limits.kv_bits or 0
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    lengths = [TOKENS, 4, 7]

    async def late(index: int) -> list[int]:
        await asyncio.sleep(0.02 * index)
        request = GenerationRequest(
            f"late{index}", PROMPTS[index], lengths[index], SamplingParams(temperature=0.0)
        )
        tokens: list[int] = []
        async for event in engine.submit(request):
            if isinstance(event, TokenEvent):
                tokens += event.token_ids
        return tokens

    results = await asyncio.gather(*(late(i) for i in range(3)))
    for index, tokens in enumerate(results):
        assert tokens == reference(model_dir, PROMPTS[index], bits)[: lengths[index]]
