"""Speculative decoding with a draft model, through the Scheduler's uid API on tiny llamas that
share the tiny tokenizer: the target drafting for itself (every draft must be kept: its draft
cache follows each row exactly), and a perturbed copy of it (drafts kept often, not always: the
rejection paths). Greedy output equals mlx-lm's own decoding (`generate_step`, and
`speculative_generate_step` with the same draft model), alone and in a batch mixing rows that
draft with rows that do not; seeded sampling repeats; unusable draft models are refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step, speculative_generate_step
from mlx_lm.utils import load

from engines.llm import draft_model
from engines.llm.engine import LLMEngine
from engines.llm.speculative import PassCost
from engines.types import ChatLimits, GenerationRequest, SamplingParams
from tests.engines.test_speculative import (
    LOOP,
    admit_at_once,  # noqa: F401 (an autouse fixture)
    mixed_requests,
    plain_llama_dir,
    scheduler,
    serve,
    text_of,
)
from tests.families import save_family_dir
from tests.helpers import run

PROMPT = [7, 30, 41, 52, 63, 74, 85, 96, 21, 32, 43]


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plain_llama_dir(tmp_path_factory.mktemp("llama") / "llama")


@pytest.fixture(scope="module")
def llama(target_dir: Path) -> tuple[Any, Any]:
    return load(str(target_dir))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def perturbed_dir(target_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The target's weights plus noise: a draft model that agrees with it often, not always."""
    directory = tmp_path_factory.mktemp("draft") / "draft"
    shutil.copytree(target_dir, directory)
    weights = mx.load(str(directory / "model.safetensors"))
    assert isinstance(weights, dict)
    noisy = {
        name: w + 0.25 * w.std() * mx.random.normal(w.shape, key=mx.random.key(i))
        for i, (name, w) in enumerate(sorted(weights.items()))
    }
    mx.save_safetensors(str(directory / "model.safetensors"), noisy)
    return directory


def test_the_target_drafting_for_itself_keeps_every_draft(
    llama: tuple[Any, Any], target_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Passes priced flat (as before any timing): the steps counted below are then the drafting's
    # own, not what a loaded machine's pass timings made the pricing cut (test_speculative
    # covers the pricing).
    monkeypatch.setattr(PassCost, "line", lambda self: None)
    sched = scheduler(llama, str(target_dir))
    [sink] = serve(sched, [GenerationRequest("solo", PROMPT, 40, SamplingParams(0.0))])
    model, _ = llama
    expected = [int(t) for t, _ in generate_step(mx.array(PROMPT), model, max_tokens=40)]
    assert sink.tokens == expected
    counters = sched.counters
    assert counters.drafted_tokens > 20 and counters.accepted_drafts == counters.drafted_tokens
    assert counters.decode_row_steps < counters.tokens_generated / 3, counters


def test_a_mixed_batch_with_a_perturbed_draft_equals_decoding_without(
    llama: tuple[Any, Any],
    perturbed_dir: Path,
) -> None:
    plain = serve(scheduler(llama, None), mixed_requests())
    sched = scheduler(llama, str(perturbed_dir))
    drafted = serve(sched, mixed_requests())
    for request, want, got in zip(mixed_requests(), plain, drafted, strict=True):
        assert got.tokens == want.tokens, request.request_id
        assert text_of(got) == text_of(want), request.request_id
        assert got.finish is not None and want.finish is not None
        assert got.finish.reason == want.finish.reason
        assert got.finish.usage == want.finish.usage
    counters = sched.counters
    # Some drafts kept, some rejected: both paths of the draft cache were taken.
    assert 0 < counters.accepted_drafts < counters.drafted_tokens, counters
    assert counters.largest_batch >= 4


def test_mixed_batch_with_the_target_as_draft_keeps_every_draft(
    llama: tuple[Any, Any],
    target_dir: Path,
) -> None:
    """Rows joining and leaving, of different lengths, drafting or not: with the target as its
    own draft, a draft row out of step with its choice would show as a rejected draft."""
    plain = serve(scheduler(llama, None), mixed_requests())
    sched = scheduler(llama, str(target_dir))
    drafted = serve(sched, mixed_requests())
    assert [s.tokens for s in drafted] == [s.tokens for s in plain]
    counters = sched.counters
    assert counters.drafted_tokens > 50 and counters.accepted_drafts == counters.drafted_tokens


def test_greedy_equals_mlx_lm_speculative_generate(
    llama: tuple[Any, Any],
    perturbed_dir: Path,
) -> None:
    """mlx-lm's own speculative decoding with the same draft model gives the same tokens."""
    model, _ = llama
    draft, _ = load(str(perturbed_dir))  # type: ignore[misc]
    reference = [
        int(t)
        for t, _, _ in speculative_generate_step(
            mx.array(LOOP), model, draft, num_draft_tokens=4, max_tokens=36
        )
    ]
    [sink] = serve(
        scheduler(llama, str(perturbed_dir)),
        [GenerationRequest("ref", LOOP, 36, SamplingParams(0.0))],
    )
    assert sink.tokens == reference


def test_seeded_sampling_repeats_and_drafts_are_kept(
    llama: tuple[Any, Any],
    perturbed_dir: Path,
) -> None:
    requests = [
        GenerationRequest(f"s{i}", PROMPT, 30, SamplingParams(0.7, top_k=20, seed=5 + i))
        for i in range(3)
    ]  # and two choices forking one prompt (its draft row prefilled once, copied)
    requests.append(GenerationRequest("n2", PROMPT, 30, SamplingParams(0.9, seed=11), n=2))
    first_sched = scheduler(llama, str(perturbed_dir))
    first = serve(first_sched, requests)
    again = serve(scheduler(llama, str(perturbed_dir)), requests)
    assert [s.tokens for s in first] == [s.tokens for s in again]
    assert [len(s.tokens) for s in first] == [30, 30, 30, 60]
    assert first_sched.counters.accepted_drafts > 0, first_sched.counters


def test_draft_models_that_cannot_draft_are_refused(
    llama: tuple[Any, Any],
    tmp_path: Path,
) -> None:
    windowed = save_family_dir("gemma3_text", tmp_path / "gemma3")
    with pytest.raises(ValueError, match="cannot drop rejected drafts"):
        scheduler(llama, str(windowed))
    with pytest.raises(ValueError, match="or a draft model's directory"):
        scheduler(llama, str(tmp_path / "nothing-here"))


async def test_the_engine_thread_drafts_with_a_draft_model(target_dir: Path) -> None:
    """Through LLMEngine (the models-file options as ChatLimits): the draft model is loaded and
    run on the engine thread, with the CPU decode rewrites the target uses on a CPU (the target
    drafting for itself: every draft kept); the per-request switch; the counters /metrics
    reads."""
    limits = ChatLimits(speculative=str(target_dir), speculative_tokens=4)
    engine = LLMEngine("tiny", target_dir, prefill_chunk=16, limits=limits)
    engine.start()
    try:
        await engine.wait_loaded()
        on = GenerationRequest("on", PROMPT, 30, SamplingParams(0.0))
        off = GenerationRequest("off", PROMPT, 30, SamplingParams(0.0), speculative=False)
        (_, with_drafts, _), (_, without, _) = await asyncio.gather(
            run(engine, on), run(engine, off)
        )
        assert with_drafts == without
        stats = engine.stats()
        assert engine.scheduler is not None and engine.scheduler.config.cpu_decode
        assert 0 < stats.accepted_drafts == stats.drafted_tokens
        assert stats.decode_row_steps < stats.tokens_generated
    finally:
        engine.stop()


def test_predictions_beside_the_target_as_draft_keep_every_draft(
    llama: tuple[Any, Any], target_dir: Path
) -> None:
    """Rows drafting from their predictions (whole, or only the first half of the output)
    while the draft model drafts for the others and for them once a prediction runs out: with
    the target as its own draft, a draft row left out of step by the rows' prediction drafts
    would show as a rejected draft."""
    plain = serve(scheduler(llama, None), mixed_requests())
    requests = [
        dataclasses.replace(
            request, prediction=tuple(sink.tokens[: len(sink.tokens) // (1 + i % 2)])
        )
        for i, (request, sink) in enumerate(zip(mixed_requests(), plain, strict=True))
    ]
    sched = scheduler(llama, str(target_dir))
    drafted = serve(sched, requests)
    assert [s.tokens for s in drafted] == [s.tokens for s in plain]
    counters = sched.counters
    assert counters.drafted_tokens > 50 and counters.accepted_drafts == counters.drafted_tokens
    kept = [s.finish.usage.accepted_prediction_tokens for s in drafted if s.finish]
    assert kept[0] > 20 and sum(kept) < counters.accepted_drafts, kept  # the model drafted too


def test_a_seeded_row_draws_the_same_drafts_whatever_else_drafts(
    llama: tuple[Any, Any], perturbed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seeded request gives the same output alone and beside rows that draft more than it
    does (docs/api.md `seed`): its draft model draws are keyed by its own seed, step and draft
    position, not by how many drafts the longest row of the batch asked for."""
    monkeypatch.setattr(PassCost, "line", lambda self: None)  # widths: the rows' own
    seeded = [
        GenerationRequest(f"s{i}", PROMPT, 9 + 4 * i, SamplingParams(0.8, seed=21 + i))
        for i in range(3)
    ]
    alone = [serve(scheduler(llama, str(perturbed_dir)), [r])[0].tokens for r in seeded]
    greedy = [GenerationRequest(f"g{i}", LOOP[i:], 40, SamplingParams(0.0)) for i in range(2)]
    sched = scheduler(llama, str(perturbed_dir))
    together = serve(sched, [*greedy, *seeded])
    assert [s.tokens for s in together[len(greedy) :]] == alone
    assert sched.counters.accepted_drafts > 0, sched.counters


def test_a_follow_up_prompt_prefills_the_draft_model_from_the_kept_prefix(
    llama: tuple[Any, Any], target_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent's next turn holds its last turn's prompt and reply: the draft model is fed only
    what the kept prompt's cache does not hold, and its cache then drafts as a cold prefill's
    would (the target drafting for itself keeps every draft; output equals mlx-lm's)."""
    monkeypatch.setattr(PassCost, "line", lambda self: None)
    sched = scheduler(llama, str(target_dir))
    model, _ = llama
    [first] = serve(sched, [GenerationRequest("turn-1", PROMPT, 24, SamplingParams(0.0))])
    follow_up = [*PROMPT, *first.tokens, 15, 16, 17]
    before = sched.counters.accepted_drafts, sched.counters.drafted_tokens
    [second] = serve(sched, [GenerationRequest("turn-2", follow_up, 30, SamplingParams(0.0))])
    draft = sched.draft_model
    assert draft is not None
    assert draft.prefilled_tokens == len(PROMPT) + (len(follow_up) - len(PROMPT))
    expected = [int(t) for t, _ in generate_step(mx.array(follow_up), model, max_tokens=30)]
    assert second.tokens == expected
    counters = sched.counters
    drafted = counters.drafted_tokens - before[1]
    assert drafted > 10 and counters.accepted_drafts - before[0] == drafted


def test_draft_caches_over_the_kept_bytes_are_not_kept(
    llama: tuple[Any, Any], target_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept prompts' draft caches are not counted by admission: past KEPT_BYTES none is
    kept, and a follow-up is prefilled whole (the output is the same)."""
    monkeypatch.setattr(draft_model, "KEPT_BYTES", 1)
    sched = scheduler(llama, str(target_dir))
    [first] = serve(sched, [GenerationRequest("turn-1", PROMPT, 8, SamplingParams(0.0))])
    follow_up = [*PROMPT, *first.tokens, 15]
    [second] = serve(sched, [GenerationRequest("turn-2", follow_up, 8, SamplingParams(0.0))])
    draft = sched.draft_model
    assert draft is not None and draft.prefilled_tokens == len(PROMPT) + len(follow_up)
    model, _ = llama
    expected = [int(t) for t, _ in generate_step(mx.array(follow_up), model, max_tokens=8)]
    assert second.tokens == expected
