"""Batch width and queue sized to the device's KV budget unless set (engines/llm/limits.py):
the arithmetic on the issue's two examples, and the limits a real engine puts in force."""

from __future__ import annotations

from pathlib import Path

import httpx

from engines.llm.engine import LLMEngine
from engines.llm.limits import MAX_BATCH, ROW_TOKENS, kv_bytes_per_token, size_limits
from engines.pool import EnginePool
from engines.types import ChatLimits
from server.app import create_app
from server.doctor import check_limits
from server.settings import Settings

GiB = 2**30
LLAMA_1B = {  # Llama-3.2-1B's config.json (the fields the estimate reads)
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 2048,
    "head_dim": 64,
    "torch_dtype": "bfloat16",
}
WEIGHTS_1B = int(2.5 * GiB)


def budget(device_bytes: int) -> int:
    """The engine's default KV budget: half the device memory minus the weights."""
    return device_bytes // 2 - WEIGHTS_1B


def test_a_1b_model_gets_hundreds_of_rows_on_an_h200_and_dozens_on_a_16_gb_mac() -> None:
    per_token = kv_bytes_per_token(LLAMA_1B)
    assert per_token == 32 * 1024  # 16 layers × 8 heads × 64 × (K, V) × 2 bytes
    h200 = size_limits(budget(141 * GiB), lambda tokens: tokens * per_token)
    mac = size_limits(budget(int(10.7 * GiB)), lambda tokens: tokens * per_token)  # Metal's set
    assert 256 <= h200.max_batch <= MAX_BATCH and h200.max_waiting == 2 * h200.max_batch
    assert 12 <= mac.max_batch <= 48
    assert f"{ROW_TOKENS}-token row" in mac.reason and "sized to the device" in mac.reason


def test_quantized_kv_admits_more_rows_in_the_same_budget() -> None:
    plain = size_limits(8 * GiB, lambda t: t * kv_bytes_per_token(LLAMA_1B))
    eight = size_limits(8 * GiB, lambda t: t * kv_bytes_per_token(LLAMA_1B, kv_bits=8))
    assert eight.max_batch >= 1.8 * plain.max_batch


def test_explicit_settings_win() -> None:
    sized = size_limits(100 * GiB, lambda tokens: tokens, max_batch=3, max_waiting=0)
    assert (sized.max_batch, sized.max_waiting) == (3, 0)
    assert "set explicitly" in sized.reason
    only_batch = size_limits(100 * GiB, lambda tokens: tokens, max_batch=5)
    assert (only_batch.max_batch, only_batch.max_waiting) == (5, 10)


async def test_the_engine_puts_sized_limits_in_force_and_reports_why(tiny_model_dir: Path) -> None:
    budget_bytes = 64 * 2**20
    sized = LLMEngine("tiny", tiny_model_dir, limits=ChatLimits(kv_budget_bytes=budget_bytes))
    explicit = LLMEngine("tiny", tiny_model_dir, limits=ChatLimits(max_batch=4, max_waiting=9))
    for engine in (sized, explicit):
        engine.start()
        await engine.wait_loaded()
    try:
        assert sized.profile is not None
        rows = min(MAX_BATCH, budget_bytes // sized.profile.row_bytes(ROW_TOKENS))
        stats = sized.stats()
        assert (stats.max_batch, stats.max_waiting) == (rows, 2 * rows)
        assert "sized to the device" in stats.limits_reason
        assert (explicit.stats().max_batch, explicit.stats().max_waiting) == (4, 9)
        assert "set explicitly" in explicit.stats().limits_reason
    finally:
        sized.stop()
        explicit.stop()


async def test_status_and_doctor_show_the_limits_in_force(tiny_model_dir: Path) -> None:
    engine = LLMEngine("tiny", tiny_model_dir, limits=ChatLimits(max_waiting=7))
    pool = EnginePool([engine])
    transport = httpx.ASGITransport(app=create_app(Settings(), pool))
    await pool.start()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            (model,) = (await http.get("/status")).json()["models"]
    finally:
        await pool.drain()
    assert model["max_batch"] == engine.max_batch and model["max_waiting"] == 7
    assert "max_batch sized to the device" in model["limits_reason"]
    assert "max_waiting set explicitly" in model["limits_reason"]
    (finding,) = check_limits(Settings(model=str(tiny_model_dir), max_batch=6))
    assert finding.facts.startswith(f"{tiny_model_dir}: max_batch 6, max_waiting 12 (")


async def test_the_default_budget_leaves_room_for_a_prefill_chunk(tiny_model_dir: Path) -> None:
    """Without an explicit budget, the KV budget is half the device's memory less the weights
    and less the transient of a prefill pass of a whole chunk (every position's logits: a joint
    prefill of fresh prompts computes them all)."""
    import json

    from engines.llm.engine import default_kv_budget
    from engines.llm.limits import PassShape, prefill_peak_bytes

    engine = LLMEngine("tiny", tiny_model_dir, prefill_chunk=256)
    engine.start()
    await engine.wait_loaded()
    try:
        config = json.loads((tiny_model_dir / "config.json").read_text())
        reserve = prefill_peak_bytes(PassShape.of(config), 256, 256, False, True)
        logits = 256 * config["vocab_size"] * 4  # float32 logits of every position of the chunk
        assert reserve > logits
        assert engine.kv_budget_bytes == default_kv_budget(engine.weights_bytes) - reserve
        assert engine.kv_budget_bytes == default_kv_budget(engine.weights_bytes, reserve)
    finally:
        engine.stop()
