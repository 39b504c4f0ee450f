"""Kernel warm-up (engines/llm/warmup.py) on a tiny random model, on its real engine thread: the
synthetic rows run through the real scheduler, leave nothing behind, and a request that arrives
during the warm-up gets exactly the tokens it gets alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engines.bridge import RequestStream
from engines.llm.engine import LLMEngine
from engines.llm.prefix_cache import PrefixCache
from engines.llm.warmup import warm_requests
from engines.types import ChatLimits, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from tests.helpers import PROMPT, reference_greedy, run
from tests.servers import wait_until


def greedy(max_tokens: int) -> GenerationRequest:
    return GenerationRequest("r", PROMPT, max_tokens, SamplingParams(temperature=0.0))


def test_warm_rows_pass_through_every_batch_width_and_avoid_end_tokens() -> None:
    requests = warm_requests(5, vocab_size=300, never=frozenset({0, 2}))
    assert [r.max_tokens for r in requests] == [2, 3, 4, 5, 6]  # widths 5, 4, …, 1 on the way out
    assert len({tuple(r.prompt_tokens[:16]) for r in requests}) == 5
    for request in requests:
        assert not {0, 2} & set(request.prompt_tokens)
        assert dict(request.sampling.logit_bias) == {0: -1e9, 2: -1e9}


class ArrivesDuringWarmUp(LLMEngine):
    """Inserts one real request on the engine thread right after the warm rows, before the
    first step, so it certainly shares the warm-up's batch."""

    def __init__(self, path: Path, request: GenerationRequest, stream: RequestStream) -> None:
        super().__init__("tiny", path, limits=ChatLimits(warmup_rows=6))
        self.arrival = (request, stream)

    def load(self) -> None:
        super().load()
        assert self.warmup.running
        self.admit(self.arrival[0])
        self.handle(self.arrival)


async def collect(stream: RequestStream) -> list[int]:
    tokens: list[int] = []
    async for event in stream:
        if isinstance(event, TokenEvent):
            tokens += event.token_ids
        elif isinstance(event, FinishEvent):
            return tokens
        else:
            raise AssertionError(f"unexpected {event}")
    raise AssertionError("stream ended without a finish event")


async def test_warm_up_runs_in_the_background_and_leaves_nothing(tiny_model_dir: Path) -> None:
    request = greedy(10)
    stream = RequestStream(request.request_id)
    engine = ArrivesDuringWarmUp(tiny_model_dir, request, stream)
    engine.start()
    try:
        await engine.wait_loaded()
        during = await collect(stream)
        assert await wait_until(lambda: engine.warmup.finished_s is not None, timeout=60)
        assert await wait_until(lambda: engine.active == 0 and engine.stats().queued == 0, 10)
        assert during == reference_greedy(engine, 10)
        # Every warm row generated exactly what it asked for (no end-of-sequence token), and
        # the real request shared their batch.
        assert engine.tokens_generated == sum(i + 2 for i in range(6)) + 10
        assert engine.largest_batch == 7
        # Only the real prompt's entries remain in the prefix cache.
        cache = engine.prefix_cache
        assert isinstance(cache, PrefixCache)
        assert len(cache) >= 1
        assert all(tuple(key[: len(PROMPT)]) == tuple(PROMPT) for key in cache._entries)
        # And the real request's answer comes back the same once the warm-up is over.
        _, after, _ = await run(engine, request)
        assert after == during
    finally:
        engine.stop()


async def test_no_warm_up_on_cpu_by_default(tiny_model_dir: Path) -> None:
    engine = LLMEngine("tiny", tiny_model_dir)
    engine.start()
    try:
        await engine.wait_loaded()
        assert engine.warmup.rows == 0
        await asyncio.sleep(0.2)
        assert engine.tokens_generated == 0
        assert engine.active == 0
    finally:
        engine.stop()
