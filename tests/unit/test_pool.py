"""The engine pool's lifecycle on scripted engines: lazy loads shared by concurrent first
requests, aliases, idle TTL, LRU eviction under a memory budget, drain before unload, 503 when a
model cannot fit. Polling with deadlines, no sleeps."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

import pytest

from engines.errors import EngineUnavailable, InvalidRequest, ModelInUse, ModelNotFound
from engines.kinds import CHAT, SPEECH
from engines.pool import EnginePool, ModelSpec
from engines.types import GenerationRequest
from tests.fakes import FakeEngine, FakeSpeechEngine
from tests.servers import wait_until

MiB = 2**20


def factory(name: str, built: list[str], **kwargs: object) -> Callable[[], FakeEngine]:
    def make() -> FakeEngine:
        built.append(name)
        return FakeEngine(name=name, context_length=4096, **kwargs)  # type: ignore[arg-type]

    return make


async def test_concurrent_first_requests_share_one_load() -> None:
    built: list[str] = []
    pool = EnginePool(specs=[ModelSpec("a", "chat", factory("a", built), aliases=("alias-a",))])
    await pool.start()
    engines = await asyncio.gather(*(pool.acquire(name, CHAT) for name in ["a", "alias-a"] * 3))
    assert built == ["a"] and pool.loads("a") == 1
    assert all(engine is engines[0] for engine in engines)
    assert pool.resolve("alias-a") == "a"
    with pytest.raises(ModelNotFound):
        await pool.acquire("b", CHAT)
    await pool.drain(timeout=1)


async def test_kinds_are_kept_apart() -> None:
    pool = EnginePool(
        specs=[
            ModelSpec("chat", "chat", factory("chat", [])),
            ModelSpec("ears", "speech", lambda: FakeSpeechEngine(name="ears")),
        ]
    )
    await pool.start()
    with pytest.raises(InvalidRequest, match="speech-to-text"):
        await pool.acquire("ears", CHAT)
    with pytest.raises(InvalidRequest, match="not a speech-to-text"):
        await pool.acquire("chat", SPEECH)
    assert (await pool.acquire("ears", SPEECH)).name == "ears"
    await pool.drain(timeout=1)


async def test_idle_models_unload_after_their_ttl_and_pinned_ones_stay() -> None:
    pool = EnginePool(
        specs=[
            ModelSpec("short", "chat", factory("short", []), idle_ttl_s=0.2),
            ModelSpec("kept", "chat", factory("kept", []), idle_ttl_s=0.2, pinned=True),
        ],
        reap_interval_s=0.05,
    )
    await pool.start()
    await pool.acquire("short", CHAT)
    await pool.acquire("kept", CHAT)
    assert await wait_until(lambda: pool.engine("short") is None, timeout=5)
    assert pool.engine("kept") is not None
    loaded = {m.name: m.loaded for m in pool.models()}
    assert loaded == {"short": False, "kept": True}
    await pool.acquire("short", CHAT)  # loads again
    assert pool.loads("short") == 2
    await pool.drain(timeout=1)


async def test_budget_evicts_the_least_recently_used_idle_model() -> None:
    built: list[str] = []
    pool = EnginePool(
        specs=[ModelSpec(n, "chat", factory(n, built), size_bytes=40 * MiB) for n in "abc"],
        memory_budget_bytes=100 * MiB,
    )
    await pool.start()
    await pool.acquire("a", CHAT)
    await pool.acquire("b", CHAT)
    await pool.acquire("a", CHAT)  # b is now the least recently used
    await pool.acquire("c", CHAT)  # 120 MiB > 100: b goes
    assert [m.name for m in pool.models() if m.loaded] == ["a", "c"]
    await pool.drain(timeout=1)


async def test_a_model_that_cannot_fit_is_refused_naming_the_holders() -> None:
    pool = EnginePool(
        specs=[
            ModelSpec("pinned", "chat", factory("pinned", []), size_bytes=60 * MiB, pinned=True,
                      preload=True),
            ModelSpec("big", "chat", factory("big", []), size_bytes=60 * MiB),
        ],
        memory_budget_bytes=100 * MiB,
    )  # fmt: skip
    await pool.start()
    with pytest.raises(EngineUnavailable, match=r"pinned \(60 MiB, pinned\)"):
        await pool.acquire("big", CHAT)
    assert pool.engine("big") is None
    await pool.drain(timeout=1)


async def test_unload_drains_running_requests_and_new_ones_wait() -> None:
    pool = EnginePool(
        specs=[ModelSpec("slow", "chat", lambda: FakeEngine("slow", "x" * 50, 0.01, 4096))]
    )
    await pool.start()
    engine = await pool.acquire("slow", CHAT)
    stream = engine.submit(GenerationRequest("r", [1, 2], 50))
    running = asyncio.create_task(_drain_events(stream))
    await wait_until(lambda: engine.active == 1, timeout=5)
    unloading = asyncio.create_task(pool.unload("slow"))
    await wait_until(lambda: pool._slot("slow").unloading is not None, timeout=5)
    waiting = asyncio.create_task(
        pool.acquire("slow", CHAT)
    )  # must wait for the unload, then reload
    text = await running
    assert text == "x" * 50  # the running request finished, whole
    assert await unloading is True
    fresh = await waiting
    assert fresh is not engine and fresh.running and pool.loads("slow") == 2
    await pool.drain(timeout=1)


async def _drain_events(stream: object) -> str:
    text = ""
    async for event in stream:  # type: ignore[attr-defined]
        text += getattr(event, "text", "")
    return text


class BrokenCheckpoint(FakeEngine):
    """An engine whose model cannot load (an unknown model type, weights that do not match)."""

    async def wait_loaded(self) -> None:
        raise EngineUnavailable(f"model {self.name!r} failed to load: unknown model_type 'nope'")


async def test_a_model_failing_to_load_at_start_leaves_the_others_serving() -> None:
    pool = EnginePool(
        specs=[
            ModelSpec("good", "chat", factory("good", []), preload=True),
            ModelSpec("bad", "chat", lambda: BrokenCheckpoint("bad"), preload=True),
        ]
    )
    await pool.start()  # does not raise: "good" serves
    assert (await pool.acquire("good", CHAT)).name == "good"
    with pytest.raises(EngineUnavailable, match="unknown model_type"):
        await pool.acquire("bad", CHAT)  # tried again on use, refused with the reason
    status = {model.name: (model.loaded, model.error) for model in pool.models()}
    assert status["good"] == (True, None)
    assert status["bad"][0] is False and "unknown model_type 'nope'" in (status["bad"][1] or "")
    await pool.drain(timeout=1)


async def test_start_fails_only_when_no_model_can_be_served() -> None:
    pool = EnginePool(
        specs=[ModelSpec("bad", "chat", lambda: BrokenCheckpoint("bad"), preload=True)]
    )
    with pytest.raises(EngineUnavailable, match=r"no model could be loaded \(bad: .*nope"):
        await pool.start()


def test_the_engine_boundary_imports_no_mlx() -> None:
    """The HTTP edge imports the pool, the kinds and the boundary types without loading MLX (a
    fresh interpreter: this one has MLX loaded by other tests)."""
    script = (
        "import sys; import engines.pool, engines.kinds, engines.types, engines.errors; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')))"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert found.stdout.strip() == "[]"


async def test_a_failed_start_is_one_line_for_uvicorn_to_log() -> None:
    """server/startup_failure.py: the lifespan's failure message is the exception's line (what
    uvicorn logs before `mlxd serve` exits 3), not Starlette's forty-line traceback."""
    from server.app import create_app
    from server.settings import Settings

    pool = EnginePool(
        specs=[ModelSpec("bad", "chat", lambda: BrokenCheckpoint("bad"), preload=True)]
    )
    app = create_app(Settings(), pool)
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    sent: list[dict[str, str]] = []

    async def send(message: dict[str, str]) -> None:
        sent.append(message)

    with pytest.raises(EngineUnavailable):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)  # type: ignore[arg-type]
    [failed] = sent
    assert failed["type"] == "lifespan.startup.failed"
    assert failed["message"].startswith("engines.errors.EngineUnavailable: no model could be")
    assert "\n" not in failed["message"] and "bad: " in failed["message"]


async def test_a_model_added_while_serving_is_removed_only_when_idle() -> None:
    pool = EnginePool(specs=[ModelSpec("a", "chat", factory("a", []))])
    await pool.start()
    pool.add(ModelSpec("b", "chat", lambda: FakeEngine("b", "x" * 50, 0.01, 4096), ("bee",)))
    with pytest.raises(ValueError, match="'bee' is used already"):
        pool.add(ModelSpec("c", "chat", factory("c", []), aliases=("bee",)))
    assert [m.name for m in pool.models()] == ["a", "b"]
    engine = await pool.acquire("bee", CHAT)
    running = asyncio.create_task(_drain_events(engine.submit(GenerationRequest("r", [1], 50))))
    await wait_until(lambda: engine.active == 1, timeout=5)
    with pytest.raises(ModelInUse, match="serving 1 request"):
        await pool.remove("b")
    assert pool.resolve("bee") == "b"  # nothing changed
    assert await running == "x" * 50
    assert (await pool.remove("bee")).name == "b"
    assert not engine.running  # stopped
    for name in ("b", "bee"):
        with pytest.raises(ModelNotFound):
            await pool.acquire(name, CHAT)
    assert [m.name for m in pool.models()] == ["a"]
    await pool.drain(timeout=1)
