"""LLMEngine on a tiny random model, on its real engine thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from engines.bridge import RequestStream
from engines.llm.engine import LLMEngine
from engines.types import (
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from tests.helpers import PROMPT, reference_greedy, run
from tests.servers import wait_until


def greedy(max_tokens: int, **kwargs: object) -> GenerationRequest:
    return GenerationRequest(
        "r",
        PROMPT,
        max_tokens,
        SamplingParams(temperature=0.0),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_greedy_matches_mlx_lm_and_respects_max_tokens(engine: LLMEngine) -> None:
    text, tokens, finish = await run(engine, greedy(12))
    assert finish.reason == "length"
    assert finish.usage.prompt_tokens == len(PROMPT)
    assert finish.usage.completion_tokens == 12
    assert tokens == reference_greedy(engine, 12)
    assert text == engine.tokenizer.decode(tokens)
    assert engine.active == 0


async def test_prefill_in_chunks_gives_the_same_tokens(engine: LLMEngine) -> None:
    """prefill_chunk=16 splits the 20-token prompt; a whole-prompt prefill must agree."""
    assert engine.scheduler is not None
    engine.scheduler.config.prefill_chunk = 4096
    _, whole, _ = await run(engine, greedy(8))
    assert engine.scheduler is not None
    engine.scheduler.config.prefill_chunk = 3
    _, chunked, _ = await run(engine, greedy(8))
    assert whole == chunked


async def test_seed_reproducible_and_different_seeds_differ(engine: LLMEngine) -> None:
    def seeded(seed: int) -> GenerationRequest:
        return GenerationRequest("s", PROMPT, 24, SamplingParams(temperature=1.0, seed=seed))

    first = await run(engine, seeded(7))
    again = await run(engine, seeded(7))
    other = await run(engine, seeded(8))
    assert first[1] == again[1]
    assert first[1] != other[1]


async def test_seeded_result_does_not_depend_on_concurrent_requests(engine: LLMEngine) -> None:
    request = GenerationRequest("s", PROMPT, 16, SamplingParams(temperature=0.9, seed=3))
    alone = await run(engine, request)
    together = await asyncio.gather(run(engine, request), run(engine, greedy(16)))
    assert together[0][1] == alone[1]


async def test_stop_token_ids_end_with_stop(engine: LLMEngine) -> None:
    expected = reference_greedy(engine, 6)
    _, tokens, finish = await run(engine, greedy(20, stop_token_ids=(expected[3],)))
    assert finish.reason == "stop"
    assert tokens == expected[:3]
    assert finish.usage.completion_tokens == 4


async def test_stop_string_is_never_emitted(engine: LLMEngine) -> None:
    full, _, _ = await run(engine, greedy(24))
    visible = full.strip()
    assert len(visible) >= 6, f"tiny model produced too little text: {full!r}"
    stop = visible[3:6]
    cut = full.index(stop)
    text, _, finish = await run(engine, greedy(24, stop=(stop,)))
    assert finish.reason == "stop"
    assert text == full[:cut]


async def test_cancel_stops_the_sequence(engine: LLMEngine) -> None:
    stream = engine.submit(greedy(200))
    seen = 0
    async for event in stream:
        if isinstance(event, TokenEvent):
            seen += 1
            if seen == 2:
                stream.cancel()
        elif isinstance(event, FinishEvent):
            assert event.reason == "cancelled"
            assert event.usage.completion_tokens < 200
            break
    assert engine.active == 0


async def test_engine_failure_fails_requests_and_engine_recovers(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert engine.scheduler is not None
    batch = engine.scheduler.batch
    assert batch is not None

    def broken() -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(batch, "schedule", broken)
    events = [event async for event in engine.submit(greedy(4))]
    assert isinstance(events[-1], ErrorEvent)
    assert "boom" in str(events[-1].error)
    assert engine.active == 0
    assert engine.stats().failures >= 1
    monkeypatch.undo()
    _, tokens, finish = await run(engine, greedy(4))
    assert finish.reason == "length" and len(tokens) == 4


async def test_slow_reader_gets_coalesced_events_and_loses_nothing(engine: LLMEngine) -> None:
    stream: RequestStream = engine.submit(greedy(30))
    while engine.active:  # let the engine finish before reading anything
        await asyncio.sleep(0.01)
    events = await stream.next_events()
    assert [type(e) for e in events] == [TokenEvent, FinishEvent]
    assert isinstance(events[0], TokenEvent)
    assert events[0].token_ids == reference_greedy(engine, 30)


async def test_watchdog_reports_a_hung_step(tiny_model_dir: Path) -> None:
    from engines.types import ChatLimits

    engine = LLMEngine("tiny", tiny_model_dir, limits=ChatLimits(watchdog_s=0.2))
    engine.start()
    await engine.wait_loaded()
    release = threading.Event()
    assert engine.scheduler is not None
    batch = engine.scheduler.batch
    assert batch is not None
    original = batch.schedule

    def hung() -> object:
        release.wait(timeout=10)
        return original()

    batch.schedule = hung  # type: ignore[method-assign]
    try:
        stream = engine.submit(greedy(3))
        assert await wait_until(lambda: engine.stats().stalled, timeout=5)
        release.set()
        events = [e async for e in stream]
        assert isinstance(events[-1], FinishEvent)
        assert await wait_until(lambda: not engine.stats().stalled, timeout=5)
    finally:
        release.set()
        engine.stop()


async def test_the_engine_thread_detokenizes_with_its_own_tokenizer(engine: LLMEngine) -> None:
    """One Rust tokenizer used from two threads can panic ("Already borrowed"): the event
    loop encodes with the front's tokenizer, the engine thread decodes with its own copy."""
    assert engine.scheduler is not None
    own = engine.scheduler._vocabulary.tokenizer
    assert own is not engine.tokenizer
    assert getattr(own, "_tokenizer", own) is not getattr(engine.tokenizer, "_tokenizer", None)
    assert own.encode("the cat") == engine.tokenizer.encode("the cat")
