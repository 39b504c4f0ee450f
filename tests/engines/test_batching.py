"""Continuous batching, the prefix cache and admission control on the tiny model's engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engines.errors import KVBudgetExceeded, Overloaded
from engines.llm import scheduler as engine_module
from engines.llm.engine import LLMEngine
from engines.types import (
    AdmittedEvent,
    ChatLimits,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
)
from tests.helpers import PROMPT, prompt, run
from tests.servers import wait_until


async def started(path: Path, **limits: int) -> LLMEngine:
    engine = LLMEngine("tiny", path, prefill_chunk=16, limits=ChatLimits(**limits))
    engine.start()
    await engine.wait_loaded()
    return engine


@pytest.fixture
async def small_engine(tiny_model_dir: Path) -> AsyncIterator[LLMEngine]:
    engine = await started(tiny_model_dir, max_batch=1, max_waiting=1)
    yield engine
    engine.stop()


async def test_seeded_tokens_are_the_same_alone_and_in_a_batch_of_16(engine: LLMEngine) -> None:
    target = GenerationRequest("t", PROMPT, 20, SamplingParams(temperature=0.8, top_p=0.9, seed=99))
    alone = await run(engine, target)
    engine.largest_batch = 0
    others = [
        GenerationRequest(f"o{i}", prompt(i), 5 + 3 * i, SamplingParams(temperature=1.0, seed=i))
        for i in range(15)
    ]
    results = await asyncio.gather(run(engine, target), *(run(engine, r) for r in others))
    assert engine.largest_batch >= 8, engine.largest_batch
    assert results[0][1] == alone[1]
    assert results[0][0] == alone[0]
    for request, (_, tokens, finish) in zip(others, results[1:], strict=True):
        assert len(tokens) == request.max_tokens and finish.reason == "length"
    greedy_alone = await run(engine, GenerationRequest("g", prompt(3), 12, SamplingParams(0.0)))
    engine.largest_batch = 0
    batch = await asyncio.gather(
        *(
            run(engine, GenerationRequest("g", prompt(3), 12, SamplingParams(0.0)))
            for _ in range(16)
        )
    )
    assert engine.largest_batch >= 8, engine.largest_batch
    assert all(tokens == greedy_alone[1] for _, tokens, _ in batch)
    assert engine.active == 0


async def test_prefix_cache_reuses_a_previous_turn(engine: LLMEngine) -> None:
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    history = [(5 * j) % 240 + 6 for j in range(120)]
    first = await run(engine, GenerationRequest("a", history, 10, SamplingParams(0.0)))
    assert first[2].usage.cached_tokens == 0
    follow_up = history + first[1] + [17, 18, 19, 20]
    hits = engine.prefix_cache.hits
    warm = await run(engine, GenerationRequest("b", follow_up, 10, SamplingParams(0.0)))
    assert engine.prefix_cache.hits == hits + 1
    shared = len(history) + len(first[1])
    assert warm[2].usage.cached_tokens >= 0.9 * shared
    cache, engine.prefix_cache = engine.prefix_cache, None
    try:
        cold = await run(engine, GenerationRequest("c", follow_up, 10, SamplingParams(0.0)))
    finally:
        engine.prefix_cache = cache
    assert cold[1] == warm[1]
    assert cold[2].usage.cached_tokens == 0


async def test_admission_is_reported_first_with_the_prefix_cache_reads(engine: LLMEngine) -> None:
    """A request with `report_admission` hears, before anything else, the prompt's length and
    how much of it the prefix cache serves: what its FinishEvent will report."""
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    history = [(7 * j) % 240 + 6 for j in range(80)]
    first = await run(engine, GenerationRequest("a", history, 6, SamplingParams(0.0)))
    follow_up = history + first[1] + [21, 22, 23]
    reported = GenerationRequest("b", follow_up, 6, SamplingParams(0.0), report_admission=True)
    events = [event async for event in engine.submit(reported)]
    admitted, finish = events[0], events[-1]
    assert isinstance(admitted, AdmittedEvent) and isinstance(finish, FinishEvent)
    assert not any(isinstance(event, AdmittedEvent) for event in events[1:])
    assert admitted.prompt_tokens == finish.usage.prompt_tokens == len(follow_up)
    assert admitted.cached_tokens == finish.usage.cached_tokens > 0


async def test_full_queue_is_overloaded_and_waiting_requests_run_later(
    small_engine: LLMEngine,
) -> None:
    engine = small_engine
    running = engine.submit(GenerationRequest("r", PROMPT, 60, SamplingParams(0.0)))
    assert await wait_until(lambda: engine.queued == 0, timeout=5)
    waiting = engine.submit(GenerationRequest("w", PROMPT, 5, SamplingParams(0.0)))
    with pytest.raises(Overloaded):
        engine.submit(GenerationRequest("x", PROMPT, 5, SamplingParams(0.0)))
    events = [e async for e in waiting]
    assert isinstance(events[-1], FinishEvent) and events[-1].reason == "length"
    assert [e async for e in running][-1].reason == "length"  # type: ignore[union-attr]
    assert engine.active == 0 and engine.queued == 0


async def test_cancelled_waiting_request_leaves_the_queue(small_engine: LLMEngine) -> None:
    engine = small_engine
    running = engine.submit(GenerationRequest("r", PROMPT, 80, SamplingParams(0.0)))
    assert await wait_until(lambda: engine.queued == 0, timeout=5)
    waiting = engine.submit(GenerationRequest("w", PROMPT, 5, SamplingParams(0.0)))
    waiting.cancel()
    events = [e async for e in waiting]
    assert isinstance(events[-1], FinishEvent) and events[-1].reason == "cancelled"
    running.cancel()
    assert await wait_until(lambda: engine.active == 0 and engine.queued == 0, timeout=5)


async def test_kv_budget_refuses_what_never_fits_and_queues_what_fits_later(
    tiny_model_dir: Path,
) -> None:
    probe = await started(tiny_model_dir)
    per_token = probe.profile.per_token
    probe.stop()
    engine = await started(tiny_model_dir, kv_budget_bytes=per_token * 512)
    try:
        with pytest.raises(KVBudgetExceeded, match="KV cache"):
            engine.submit(GenerationRequest("big", PROMPT, 600, SamplingParams(0.0)))
        # Each fits alone (≤ 256 tokens → one 256-token step), two together do not.
        first = engine.submit(GenerationRequest("a", PROMPT, 200, SamplingParams(0.0)))
        second = engine.submit(GenerationRequest("b", PROMPT, 200, SamplingParams(0.0)))
        third = engine.submit(GenerationRequest("c", PROMPT, 200, SamplingParams(0.0)))
        await wait_until(lambda: engine.largest_batch > 0, timeout=5)
        results = [[e async for e in s] for s in (first, second, third)]
        assert all(r[-1].reason == "length" for r in results)  # type: ignore[union-attr]
        assert engine.largest_batch == 2  # two rows of ≤ 256 tokens fit 512 tokens of budget
    finally:
        engine.stop()


async def test_prompts_prefilled_together_match_each_alone(engine: LLMEngine) -> None:
    assert engine.scheduler is not None
    engine.scheduler.config.prefill_chunk = 4096
    requests = [
        GenerationRequest(
            f"p{i}", prompt(i), 10, SamplingParams(temperature=0.0 if i % 2 else 0.9, seed=i)
        )
        for i in range(8)
    ]
    alone = [await run(engine, r) for r in requests]
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()  # so no prompt resumes from a cached prefix (a separate path)
    before = engine.prefilled_together
    blocker = engine.submit(GenerationRequest("block", PROMPT, 30, SamplingParams(0.0)))
    await wait_until(lambda: engine.queued == 0, timeout=5)  # the blocker is running
    together = await asyncio.gather(*(run(engine, r) for r in requests))
    assert engine.prefilled_together - before >= 2
    for single, grouped in zip(alone, together, strict=True):
        assert grouped[1] == single[1]
    assert [e async for e in blocker][-1].reason == "length"  # type: ignore[union-attr]


async def test_memory_returns_to_weights_and_prefix_cache(engine: LLMEngine) -> None:
    """After a burst with cancellations, MLX holds the weights and what the prefix cache
    accounts for, nothing more (prefix entries used to keep whole batch buffers alive)."""
    import mlx.core as mx

    assert engine.prefix_cache is not None
    # Whatever else this process holds (weights, other tests' leftovers) is the baseline.
    baseline = mx.get_active_memory() - engine.prefix_cache.nbytes

    async def one(i: int) -> None:
        stream = engine.submit(
            GenerationRequest(f"m{i}", prompt(i) * 4, 24, SamplingParams(temperature=1.0, seed=i))
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if i % 3 == 1 and seen >= 1 + i % 7:
                stream.cancel()
                break

    for _ in range(2):
        await asyncio.gather(*(one(i) for i in range(16)))
    assert await wait_until(lambda: engine.active == 0, timeout=30)
    assert await wait_until(
        lambda: mx.get_active_memory() <= baseline + engine.prefix_cache.nbytes + 2**18,
        timeout=10,
    ), (mx.get_active_memory(), baseline, engine.prefix_cache.nbytes)


async def test_a_burst_of_arrivals_is_prefilled_in_one_pass(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests arriving close together (here 10 ms apart, with the quiet window widened to
    50 ms so the test does not depend on this machine's speed) are admitted as one group."""
    monkeypatch.setattr(engine_module, "ARRIVAL_QUIET_S", 0.05)
    monkeypatch.setattr(engine_module, "ARRIVAL_WAIT_MAX_S", 1.0)
    assert engine.scheduler is not None
    engine.scheduler.config.prefill_chunk = 4096
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    before = engine.prefilled_together
    streams = []
    for i in range(4):
        streams.append(engine.submit(GenerationRequest(f"b{i}", prompt(i), 4, SamplingParams())))
        await asyncio.sleep(0.01)
    for stream in streams:
        assert isinstance([e async for e in stream][-1], FinishEvent)
    assert engine.prefilled_together - before == 4


async def test_cached_prompts_arriving_together_share_one_pass(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same prompts again, all at once: each resumes from the prefix cache with one token
    left, they are prefilled in one pass over their merged histories, and every seeded choice
    gives the tokens it gave the first time."""
    monkeypatch.setattr(engine_module, "ARRIVAL_QUIET_S", 0.05)
    monkeypatch.setattr(engine_module, "ARRIVAL_WAIT_MAX_S", 1.0)
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    requests = [
        GenerationRequest(
            f"c{i}",
            prompt(i) * (i + 2),
            6,
            SamplingParams(temperature=0.0 if i % 2 else 0.9, seed=i),
        )
        for i in range(4)
    ]
    first = [await run(engine, r) for r in requests]
    before = engine.prefilled_together
    again = await asyncio.gather(*(run(engine, r) for r in requests))
    assert engine.prefilled_together - before == 4
    for (_, tokens, _), (_, tokens_again, finish) in zip(first, again, strict=True):
        assert tokens_again == tokens
        assert finish.usage.cached_tokens > 0


async def test_first_tokens_are_read_before_the_next_step_unless_pipelined(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipelined (GPUs), step 2 is launched before the first token is read; in order (CPU, where
    a launch computes the step before returning) the first token is read first and reaches the
    client a step sooner."""
    from engines.llm.sequence import Choice
    from tests.engines.test_prefill_bucket import ShapeRecorder

    assert engine.scheduler is not None
    recorder = ShapeRecorder(engine.scheduler.model)
    engine.scheduler.model = engine.scheduler.batch._model = recorder  # prefill and decode passes
    passes_at_first_token: list[int] = []
    accept = Choice.accept

    def recording_accept(self: Choice, *args: Any) -> bool:
        if not self.tokens:
            passes_at_first_token.append(len(recorder.query_lengths))
        return accept(self, *args)

    monkeypatch.setattr(Choice, "accept", recording_accept)
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    _, tokens, _ = await run(engine, GenerationRequest("o", PROMPT, 5, SamplingParams(0.0)))
    assert len(tokens) == 5
    prompt_passes = 3  # 16 tokens, 3, then the last one (prefill_chunk 16, 20-token prompt)
    assert recorder.query_lengths[:prompt_passes] == [16, 3, 1]
    pipelined = engine.scheduler.config.pipelined
    assert passes_at_first_token == [prompt_passes + (1 if pipelined else 0)]


async def test_in_order_steps_launch_nothing_past_a_finished_row(engine: LLMEngine) -> None:
    """Pipelined, the step after a row's last token is launched before that token is read (one
    wasted pass); in order, nothing is computed past the last token."""
    from tests.engines.test_prefill_bucket import ShapeRecorder

    assert engine.scheduler is not None
    recorder = ShapeRecorder(engine.scheduler.model)
    engine.scheduler.model = engine.scheduler.batch._model = recorder  # prefill and decode passes
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    _, tokens, _ = await run(engine, GenerationRequest("o", PROMPT, 5, SamplingParams(0.0)))
    assert len(tokens) == 5
    single_token_passes = recorder.query_lengths.count(1)  # the last prompt token + decode steps
    pipelined = engine.scheduler.config.pipelined
    assert single_token_passes == (6 if pipelined else 5), recorder.query_lengths
