"""The prefix cache on disk (engines/llm/disk_cache.py) with the tiny model's real caches: an
entry evicted from memory or left at unload comes back (after a restart too) with the same
tokens as an uncached run; a corrupt, stale or foreign entry is dropped, never served; the
files stay within their byte bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load

from engines.llm import disk_cache
from engines.llm.disk_cache import DiskPrefixCache, model_identity
from engines.llm.engine import LLMEngine
from engines.llm.prefix_cache import PrefixCache
from engines.llm.quantized_cache import QuantizedKV
from engines.types import ChatLimits, FinishEvent, GenerationRequest, SamplingParams, TokenEvent

PROMPT = [(7 * j) % 240 + 5 for j in range(40)]


def filled(model: Any, tokens: list[int]) -> list[Any]:
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([tokens]), cache=cache))
    return cache


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    return load(str(tiny_model_dir))[0]


@pytest.fixture(autouse=True)
def short_entries_spill(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model's prompts are 40 tokens: let entries that short go to disk here."""
    monkeypatch.setattr(disk_cache, "MIN_TOKENS", 16)


def test_short_entries_stay_in_memory(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below MIN_TOKENS nothing is written, and no prefix that short is served from disk."""
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=2**30)
    monkeypatch.setattr(disk_cache, "MIN_TOKENS", len(PROMPT) + 1)
    disk.save(tuple(PROMPT), filled(model, PROMPT))
    assert len(disk) == 0 and not list(disk.directory.glob("*.safetensors"))
    monkeypatch.setattr(disk_cache, "MIN_TOKENS", len(PROMPT))
    disk.save(tuple(PROMPT), filled(model, PROMPT))
    assert len(disk) == 1
    assert disk.best([*PROMPT, 1], len(PROMPT)) == (tuple(PROMPT), len(PROMPT))
    monkeypatch.setattr(disk_cache, "MIN_TOKENS", len(PROMPT) + 1)
    assert disk.best([*PROMPT, 1], len(PROMPT)) == (None, 0)


def test_an_evicted_entry_comes_back_from_disk(model: Any, tmp_path: Path) -> None:
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=2**30)
    memory = PrefixCache(2**30, max_entries=1, disk=disk)
    memory.insert(PROMPT, filled(model, PROMPT))
    other = [t + 1 for t in PROMPT]
    memory.insert(other, filled(model, other))  # evicts the first: spilled
    assert len(disk) == 1 and disk.nbytes > 0
    cache, reused = memory.lookup([*PROMPT, 9, 9])
    assert reused == len(PROMPT) and disk.hits == 1 and cache is not None
    expected = filled(model, PROMPT)
    for mine, theirs in zip(cache, expected, strict=True):
        assert mx.array_equal(mine.state[0], theirs.state[0])
        assert mx.array_equal(mine.state[1], theirs.state[1])


def test_a_corrupt_entry_is_dropped_not_served(model: Any, tmp_path: Path) -> None:
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=2**30)
    disk.save(tuple(PROMPT), filled(model, PROMPT))
    (file,) = disk.directory.glob("*.safetensors")
    data = bytearray(file.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the arrays
    file.write_bytes(bytes(data))
    memory = PrefixCache(2**30, disk=disk)
    assert memory.lookup([*PROMPT, 9]) == (None, 0)
    assert disk.dropped == 1 and not file.exists() and len(disk) == 0


def test_stale_and_foreign_entries_are_dropped_at_start(model: Any, tmp_path: Path) -> None:
    first = DiskPrefixCache(tmp_path, "model-a", max_bytes=2**30)
    first.save(tuple(PROMPT), filled(model, PROMPT))
    (file,) = first.directory.glob("*.safetensors")
    foreign = tmp_path / "model-b"
    foreign.mkdir()
    (foreign / file.name).write_bytes(file.read_bytes())  # model a's entry under model b
    (foreign / "truncated.safetensors").write_bytes(file.read_bytes()[:50])
    second = DiskPrefixCache(tmp_path, "model-b", max_bytes=2**30)
    assert len(second) == 0 and second.dropped == 2
    assert list(foreign.iterdir()) == []
    assert len(DiskPrefixCache(tmp_path, "model-a", max_bytes=2**30)) == 1


def test_files_stay_within_their_bytes_least_recently_used_first(
    model: Any, tmp_path: Path
) -> None:
    prompts = [[t + k for t in PROMPT] for k in range(3)]
    probe = DiskPrefixCache(tmp_path / "probe", "id", max_bytes=2**30)
    probe.save(tuple(prompts[0]), filled(model, prompts[0]))
    size = probe.nbytes
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=2 * size + size // 2)
    for prompt in prompts[:2]:
        disk.save(tuple(prompt), filled(model, prompt))
    assert disk.load(tuple(prompts[0])) is not None  # used: the second is now the oldest
    disk.save(tuple(prompts[2]), filled(model, prompts[2]))
    assert len(disk) == 2 and disk.nbytes <= disk.max_bytes
    assert disk.best(prompts[1] + [1], 41) == (None, 0)
    assert disk.best(prompts[0] + [1], 41)[1] == 40


def test_model_identity_changes_with_the_checkpoint_and_options(tiny_model_dir: Path) -> None:
    plain = model_identity(tiny_model_dir, "kv_bits=None")
    assert plain == model_identity(tiny_model_dir, "kv_bits=None")
    assert plain != model_identity(tiny_model_dir, "kv_bits=8")


async def generate(engine: LLMEngine, prompt: list[int]) -> tuple[list[int], int]:
    request = GenerationRequest("r", prompt, 8, SamplingParams(temperature=0.0))
    tokens: list[int] = []
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent):
            tokens += event.token_ids
        elif isinstance(event, FinishEvent):
            return tokens, event.usage.cached_tokens
    raise AssertionError("no FinishEvent")


async def started(path: Path, limits: ChatLimits) -> LLMEngine:
    engine = LLMEngine("tiny", path, prefill_chunk=16, limits=limits)
    engine.start()
    await engine.wait_loaded()
    return engine


async def test_a_prompt_seen_before_resumes_after_a_restart(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    uncached = await started(tiny_model_dir, ChatLimits(prefix_cache_bytes=0))
    follow_up = [*PROMPT, 11, 12, 13]
    try:
        expected, _ = await generate(uncached, follow_up)
    finally:
        uncached.stop()
    limits = ChatLimits(prefix_disk_dir=str(tmp_path), prefix_disk_bytes=2**30)
    first = await started(tiny_model_dir, limits)
    try:
        await generate(first, PROMPT)
    finally:
        first.stop()  # unloading spills the memory entries
    restarted = await started(tiny_model_dir, limits)
    try:
        tokens, cached = await generate(restarted, follow_up)
        stats = restarted.stats()
    finally:
        restarted.stop()
    assert cached >= len(PROMPT) and tokens == expected
    assert stats.prefix_disk_hits == 1 and stats.prefix_disk_entries >= 1


def test_a_quantized_cache_round_trips(tmp_path: Path) -> None:
    layer = QuantizedKV(group_size=32, bits=8)
    keys = mx.random.normal((1, 2, 40, 32), key=mx.random.key(0))
    layer.update_and_fetch(keys, keys * 2)
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=2**30)
    disk.save(tuple(PROMPT), [layer])
    (back,) = DiskPrefixCache(tmp_path, "id", max_bytes=2**30).load(tuple(PROMPT)) or [None]
    assert isinstance(back, QuantizedKV)
    assert (back.offset, back.bits, back.group_size) == (40, 8, 32)
    for mine, theirs in zip(back.keys_and_values(), layer.keys_and_values(), strict=True):
        assert all(mx.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))
