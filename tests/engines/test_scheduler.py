"""The Scheduler on its own: no engine thread, no event loop, events collected in lists.

It is driven through its uid API (insert / remove / step) on the calling thread, with the
tiny llama and with a sliding-window family, and checked against mlx-lm's greedy generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load

from engines.errors import EngineFailed
from engines.llm.caches import CacheProfile
from engines.llm.detokenize import TokenBytes
from engines.llm.prefix_cache import PrefixCache
from engines.llm.sampling import TokenSampler
from engines.llm.scheduler import Scheduler
from engines.llm.scheduler_config import SchedulerConfig
from engines.llm.sequence import Vocabulary
from engines.types import (
    ErrorEvent,
    Event,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from tests.families import save_family_dir


class ListSink:
    """Collects a request's events; `cancelled` can be set by the test."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.cancelled = False

    def push(self, event: Event) -> None:
        self.events.append(event)

    @property
    def tokens(self) -> list[int]:
        return [t for e in self.events if isinstance(e, TokenEvent) for t in e.token_ids]

    @property
    def finish(self) -> FinishEvent | None:
        return next((e for e in self.events if isinstance(e, FinishEvent)), None)


def build(path: Path) -> tuple[Scheduler, Any, list[int]]:
    """A scheduler over the model at `path`; also the model and the released counts."""
    model, tokenizer = load(str(path))  # type: ignore[misc]
    probe = make_prompt_cache(model)
    mx.eval(model(mx.array([[0, 1]]), cache=probe))
    eos = frozenset(int(t) for t in tokenizer.eos_token_ids)
    counts = [0, 0]

    def release(choices: int, queued: int) -> None:
        counts[0] += choices
        counts[1] += queued

    def sampler(request: GenerationRequest) -> TokenSampler:
        return TokenSampler(request.sampling, 0, 300, request.prompt_tokens, None, None)

    scheduler = Scheduler(
        model,
        Vocabulary(tokenizer, TokenBytes(tokenizer), eos),
        CacheProfile.of(probe),
        SchedulerConfig(max_batch=8, kv_budget_bytes=2**30, prefill_chunk=64, pipelined=False),
        sampler,
        release,
        PrefixCache(2**26),
    )
    return scheduler, model, counts


def run_until_idle(scheduler: Scheduler, limit: int = 200) -> None:
    for _ in range(limit):
        if not scheduler.has_work():
            return
        scheduler.step()
    raise AssertionError("the scheduler did not finish")


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_insert_step_remove_without_threads(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engines.llm.scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "ARRIVAL_QUIET_S", 0.0)  # admit at the first step
    scheduler, model, released = build(save_family_dir(family, tmp_path / family))
    prompts = [[(3 * i + j) % 200 + 7 for j in range(20 + i)] for i in range(3)]
    sinks = [ListSink() for _ in prompts]
    uids = [
        scheduler.insert(GenerationRequest(f"r{i}", p, 6, SamplingParams(0.0)), sink)
        for i, (p, sink) in enumerate(zip(prompts, sinks, strict=True))
    ]
    assert len(set(uids)) == 3
    leaving = ListSink()
    gone = scheduler.insert(GenerationRequest("gone", prompts[0], 50, SamplingParams(0.0)), leaving)
    scheduler.step()
    scheduler.remove(gone)
    run_until_idle(scheduler)
    for prompt, sink in zip(prompts, sinks, strict=True):
        expected = [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=6)]
        assert sink.tokens == expected
        assert sink.finish is not None and sink.finish.reason == "length"
    assert leaving.finish is not None and leaving.finish.reason == "cancelled"
    assert scheduler.counters.largest_batch >= 3
    # Every choice and queue place taken at insert was released exactly once.
    assert released == [-4, -4]


def test_a_request_whose_start_fails_still_hears_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If starting a prefill raises (a grammar that fails to build, say), the step fails as the
    engine thread sees it, and fail_all reaches that request: its client gets an error event
    instead of waiting forever, and its counts are released once."""
    import engines.llm.scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "ARRIVAL_QUIET_S", 0.0)
    scheduler, _, released = build(save_family_dir("llama", tmp_path / "llama"))
    doomed = ListSink()
    scheduler.insert(GenerationRequest("doomed", [7, 8, 9, 10], 4, SamplingParams(0.0)), doomed)
    start = scheduler._start_prefill

    def failing_start(waiting: Any) -> Any:
        raise RuntimeError("sampler could not be built")

    monkeypatch.setattr(scheduler, "_start_prefill", failing_start)
    with pytest.raises(RuntimeError):
        scheduler.step()
    scheduler.fail_all(EngineFailed("engine error: RuntimeError: sampler could not be built"))
    assert [type(event) for event in doomed.events] == [ErrorEvent]
    assert released == [-1, -1] and not scheduler.has_work()
    monkeypatch.setattr(scheduler, "_start_prefill", start)
    later = ListSink()
    scheduler.insert(GenerationRequest("later", [7, 8, 9, 10], 4, SamplingParams(0.0)), later)
    run_until_idle(scheduler)
    assert later.finish is not None and len(later.tokens) == 4
