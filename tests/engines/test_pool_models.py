"""A pool from a models file with two tiny random chat models and a tiny whisper, on their real
engine threads: lazy loads (six concurrent first requests → one load), aliases, idle TTL, LRU
eviction within a memory budget, drain before unload, 503 when a model cannot fit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from engines.asr.audio import content_frames, log_mel
from engines.errors import EngineUnavailable
from engines.kinds import CHAT, SPEECH
from engines.pool import EnginePool
from engines.types import GenerationRequest, SamplingParams, TranscriptionDone, TranscriptionRequest
from engines.weights.ct2 import import_ct2
from server.app import build_pool
from server.settings import Settings
from tests.helpers import run
from tests.servers import wait_until
from tests.tiny import save_model_dir, tiny_model
from tests.tiny_whisper import write_tiny_ct2


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pool")
    return {
        "a": save_model_dir(tiny_model("llama", seed=1), "llama", root / "a"),
        "b": save_model_dir(tiny_model("qwen2", seed=2), "qwen2", root / "b"),
        "ears": import_ct2(write_tiny_ct2(root / "ct2"), root / "ears"),
    }


def models_file(tmp_path: Path, sources: dict[str, Path], budget_mb: int, ttl: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        f"memory_budget_mb = {budget_mb}\n"
        f'[[models]]\nname = "a"\nsource = "{sources["a"]}"\naliases = ["fast"]\n{ttl}\n'
        f'[[models]]\nname = "b"\nsource = "{sources["b"]}"\ncontext_length = 64\n'
        "chat_template = \"{% for m in messages %}[{{ m['content'] }}]{% endfor %}\"\n"
        f'[[models]]\nname = "ears"\nsource = "{sources["ears"]}"\nkind = "speech"\n'
    )
    return path


@pytest.fixture
async def pool(tmp_path: Path, sources: dict[str, Path]) -> AsyncIterator[EnginePool]:
    settings = Settings(config=models_file(tmp_path, sources, 4096, "idle_ttl_s = 0.5"),
                        home=tmp_path)  # fmt: skip
    engines = build_pool(settings)
    await engines.start()
    yield engines
    await engines.drain(timeout=5)


def hello(name: str) -> GenerationRequest:
    return GenerationRequest(name, [5, 6, 7, 8], 8, SamplingParams(0.0))


async def test_six_first_requests_share_one_load_and_aliases_resolve(pool: EnginePool) -> None:
    assert not any(model.loaded for model in pool.models())  # nothing preloaded
    engines = await asyncio.gather(*(pool.acquire(n, CHAT) for n in ["a", "fast"] * 3))
    assert pool.loads("a") == 1 and all(e is engines[0] for e in engines)
    results = await asyncio.gather(*(run(e, hello(f"r{i}")) for i, e in enumerate(engines)))
    assert all(finish.reason == "length" for _, _, finish in results)
    ears = await pool.acquire("ears", SPEECH)
    samples = np.zeros(16000, np.float32)
    stream = ears.submit(TranscriptionRequest("t", log_mel(samples, 80), content_frames(samples)))
    assert isinstance([event async for event in stream][-1], TranscriptionDone)


async def test_idle_ttl_unloads_and_the_next_request_reloads(pool: EnginePool) -> None:
    await run(await pool.acquire("a", CHAT), hello("x"))
    assert await wait_until(lambda: pool.engine("a") is None, timeout=15)
    await run(await pool.acquire("fast", CHAT), hello("y"))
    assert pool.loads("a") == 2


async def test_budget_evicts_lru_and_refuses_what_cannot_fit(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    def size(name: str) -> int:
        return sum(f.stat().st_size for f in sources[name].glob("*.safetensors"))

    settings = Settings(config=models_file(tmp_path, sources, 64, ""), home=tmp_path)
    pool = build_pool(settings)
    # Room for either chat model, not both (the file's minimum of 64 MiB is more than they take).
    pool.memory_budget_bytes = size("a") + size("b") - 1
    await pool.start()
    try:
        await run(await pool.acquire("a", CHAT), hello("1"))
        await run(await pool.acquire("b", CHAT), hello("2"))  # a is evicted to make room
        assert [m.name for m in pool.models() if m.loaded] == ["b"]
        engine_b = await pool.acquire("b", CHAT)
        busy = asyncio.create_task(run(engine_b, GenerationRequest("long", [5, 6], 400)))
        await wait_until(lambda: engine_b.active == 1, timeout=10)
        with pytest.raises(EngineUnavailable, match="held by: b"):
            await pool.acquire("a", CHAT)  # b is busy: nothing can be evicted
        await busy
    finally:
        await pool.drain(timeout=5)


async def test_per_model_context_cap_and_chat_template(pool: EnginePool) -> None:
    engine = await pool.acquire("b", CHAT)
    assert engine.info is not None and engine.info.context_length == 64
    prompt = engine.encode_chat([{"role": "user", "content": "hi"}])
    assert engine.decode(prompt) == "[hi]"
