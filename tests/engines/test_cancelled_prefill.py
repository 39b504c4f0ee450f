"""A prompt cancelled while it is being prefilled leaves its prefilled part in the prefix cache
(engines/llm/scheduler.py `_keep_prefilled`): the same prompt sent again resumes from it, with
mlx-lm's greedy tokens. Agents that give up on a long prefill and retry (Claude Code cuts a stream
at 10 minutes) otherwise start from zero every time."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step

import engines.llm.scheduler as scheduler_module
from engines.types import GenerationRequest, SamplingParams
from tests.engines.test_scheduler import ListSink, build

PROMPT = [(7 * j) % 240 + 5 for j in range(200)]  # longer than one step's prefill chunk (64)


def test_a_retry_resumes_from_the_cancelled_prefill(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "ARRIVAL_QUIET_S", 0.0)
    scheduler, model, released = build(tiny_model_dir)
    gave_up = ListSink()
    scheduler.insert(GenerationRequest("first", PROMPT, 4, SamplingParams(0.0)), gave_up)
    scheduler.step()
    scheduler.step()  # two chunks of the prompt are in its cache
    gave_up.cancelled = True
    scheduler.step()
    assert gave_up.finish is not None and gave_up.finish.reason == "cancelled"
    assert gave_up.tokens == []
    retry = ListSink()
    scheduler.insert(GenerationRequest("retry", PROMPT, 4, SamplingParams(0.0)), retry)
    for _ in range(50):
        if not scheduler.has_work():
            break
        scheduler.step()
    assert retry.finish is not None
    assert retry.finish.usage.cached_tokens == 128
    assert retry.tokens == [int(t) for t, _ in generate_step(mx.array(PROMPT), model, max_tokens=4)]
    assert released == [-2, -2]
