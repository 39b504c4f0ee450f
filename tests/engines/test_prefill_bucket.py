"""Prefill passes padded to a bucketed query length (what the engine does on CUDA) give exactly
what unpadded passes give: the padding is trimmed from the KV caches and never seen by a real
position. Run here on the tiny model with the bucket forced on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engines.llm import scheduler as engine_module
from engines.llm.engine import LLMEngine
from engines.types import GenerationRequest, PromptEvent, SamplingParams
from tests.helpers import prompt, run
from tests.servers import wait_until

BUCKET = 32


class ShapeRecorder:
    """The engine's model, recording the query length of every forward pass."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.query_lengths: list[int] = []

    def __call__(self, tokens: Any, cache: Any = None) -> Any:
        self.query_lengths.append(int(tokens.shape[1]))
        return self.model(tokens, cache=cache)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


@pytest.fixture
async def recorded(tiny_model_dir: Path) -> AsyncIterator[tuple[LLMEngine, ShapeRecorder]]:
    engine = LLMEngine("tiny", tiny_model_dir, prefill_chunk=16)
    engine.start()
    await engine.wait_loaded()
    assert engine.scheduler is not None
    recorder = ShapeRecorder(engine.scheduler.model)
    engine.scheduler.model = recorder  # idle engine: the thread reads it only at the next step
    yield engine, recorder
    engine.stop()


def requests() -> list[GenerationRequest]:
    """Prompts of 20 to 60 tokens (fed in 16-token chunks; long enough to be cached), sampled
    and greedy."""
    return [
        GenerationRequest(
            f"r{i}", prompt(i) * (2 + i % 3), 8, SamplingParams(0.9 if i % 2 else 0.0, seed=i)
        )
        for i in range(6)
    ]


async def outputs(engine: LLMEngine, bucket: int, together: bool) -> list[list[int]]:
    """Every request's tokens with the cache cleared, one at a time or all at once; then every
    request again (resuming from the prefix cache it just filled)."""
    assert engine.scheduler is not None
    engine.scheduler.config.prefill_bucket = bucket
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    if together:
        results = await asyncio.gather(*(run(engine, r) for r in requests()))
        again = await asyncio.gather(*(run(engine, r) for r in requests()))
    else:
        results = [await run(engine, r) for r in requests()]
        again = [await run(engine, r) for r in requests()]
    assert all(finish.usage.cached_tokens > 0 for _, _, finish in again)
    return [tokens for _, tokens, _ in results + again]


@pytest.mark.parametrize("together", [False, True], ids=["one-at-a-time", "together"])
async def test_padded_passes_give_the_tokens_of_unpadded_ones(
    recorded: tuple[LLMEngine, ShapeRecorder], monkeypatch: pytest.MonkeyPatch, together: bool
) -> None:
    engine, recorder = recorded
    if together:  # arrivals admitted as one group, whatever this machine's speed
        monkeypatch.setattr(engine_module, "ARRIVAL_QUIET_S", 0.05)
        monkeypatch.setattr(engine_module, "ARRIVAL_WAIT_MAX_S", 1.0)
    unpadded = await outputs(engine, 1, together)
    assert any(n > 1 and n % BUCKET for n in recorder.query_lengths)
    recorder.query_lengths.clear()
    before = engine.prefilled_together
    padded = await outputs(engine, BUCKET, together)
    assert padded == unpadded
    # Every multi-token pass was padded (single-token passes are the last prompt token and
    # decode steps); passes over several prompts happened when they arrived together.
    assert all(n == 1 or n % BUCKET == 0 for n in recorder.query_lengths)
    assert (engine.prefilled_together > before) == together
    assert await wait_until(lambda: engine.active == 0, timeout=5)


async def test_padded_passes_score_the_prompt_as_unpadded_ones(
    recorded: tuple[LLMEngine, ShapeRecorder],
) -> None:
    engine, recorder = recorded
    request = GenerationRequest(
        "s", prompt(5) * 4, 4, SamplingParams(0.0), logprobs=3, prompt_logprobs=True
    )
    scored = []
    for bucket in (1, BUCKET):
        assert engine.scheduler is not None
        engine.scheduler.config.prefill_bucket = bucket
        events = [e async for e in engine.submit(request)]
        assert isinstance(events[0], PromptEvent)
        scored.append(events[0].logprobs)
    assert any(n % BUCKET == 0 for n in recorder.query_lengths)
    unpadded, padded = scored
    assert [e.token for e in padded] == [e.token for e in unpadded]
    for mine, reference in zip(padded[1:], unpadded[1:], strict=True):
        assert mine.logprob == pytest.approx(reference.logprob, abs=1e-4)
        assert [t[0] for t in mine.top] == [t[0] for t in reference.top]
