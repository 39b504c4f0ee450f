"""Speculative decoding in the batch (prompt lookup), driven through the Scheduler's uid API on
the tiny llama: greedy output equals decoding without speculation — alone, in a batch mixing rows
that draft with rows that do not (per-request off, penalties, a grammar-free logprobs row), with
stop strings and max_tokens landing inside a run of kept drafts — and drafts are really kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import KVCache, make_prompt_cache
from mlx_lm.utils import load

from engines.llm import scheduler as scheduler_module
from engines.llm.batch import DecodeBatch
from engines.llm.caches import CacheProfile
from engines.llm.detokenize import TokenBytes
from engines.llm.engine import LLMEngine
from engines.llm.prefix_cache import PrefixCache
from engines.llm.ragged_cache import RaggedKVCache
from engines.llm.sampling import TokenSampler
from engines.llm.scheduler import Scheduler
from engines.llm.scheduler_config import SchedulerConfig
from engines.llm.sequence import Vocabulary
from engines.llm.speculative import (
    DraftLength,
    NgramIndex,
    PassCost,
    RowResult,
    RowSpeculation,
    best_width,
    fit_to_pass,
    record,
)
from engines.types import ChatLimits, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from tests.engines.test_scheduler import ListSink, run_until_idle
from tests.families import save_family_dir
from tests.helpers import run
from tests.tiny import VOCAB, save_model_dir, tiny_model

# A prompt that repeats itself: the random model's continuation tends to loop too, and prompt
# lookup then finds n-grams to draft from in both.
LOOP = [11, 12, 13, 14, 15, 16, 17, 18] * 4
GREEDY = SamplingParams(0.0)


def plain_llama_dir(directory: Path) -> Path:
    """tests/tiny.py's llama: every layer a plain KV cache (what speculation needs)."""
    return save_model_dir(tiny_model("llama"), "llama", directory)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    path = plain_llama_dir(tmp_path_factory.mktemp("llama") / "llama")
    return load(str(path))  # type: ignore[return-value]


def scheduler(
    llama: tuple[Any, Any], speculative: str | None, max_batch: int = 8, pipelined: bool = False
) -> Scheduler:
    model, tokenizer = llama
    probe = make_prompt_cache(model)
    mx.eval(model(mx.array([[0, 1]]), cache=probe))
    eos = frozenset(int(t) for t in tokenizer.eos_token_ids)

    def sampler(request: GenerationRequest) -> TokenSampler:
        sampling = request.sampling
        return TokenSampler(
            sampling, sampling.seed or 0, VOCAB, request.prompt_tokens, request.logprobs
        )

    config = SchedulerConfig(
        max_batch=max_batch,
        kv_budget_bytes=2**30,
        prefill_chunk=64,
        pipelined=pipelined,
        speculative=speculative,
        speculative_tokens=6,
    )
    return Scheduler(
        model,
        Vocabulary(tokenizer, TokenBytes(tokenizer), eos),
        CacheProfile.of(probe),
        config,
        sampler,
        lambda choices, queued: None,
        PrefixCache(2**26),
    )


def serve(sched: Scheduler, requests: list[GenerationRequest]) -> list[ListSink]:
    sinks = [ListSink() for _ in requests]
    for request, sink in zip(requests, sinks, strict=True):
        sched.insert(request, sink)
    run_until_idle(sched, limit=400)
    return sinks


def text_of(sink: ListSink) -> str:
    return "".join(e.text for e in sink.events if isinstance(e, TokenEvent))


def mixed_requests() -> list[GenerationRequest]:
    def prompt(i: int) -> list[int]:
        return [*LOOP[i:], *[(5 * i + j) % 200 + 20 for j in range(6)], *LOOP[: 8 + i]]

    greedy = SamplingParams(0.0)
    return [
        GenerationRequest("a", prompt(0), 40, greedy),
        GenerationRequest("b", prompt(1), 33, greedy, logprobs=3),
        GenerationRequest("c", prompt(2), 40, greedy, speculative=False),
        GenerationRequest("d", prompt(3), 40, SamplingParams(0.0, repetition_penalty=1.3)),
        GenerationRequest("e", prompt(4), 17, greedy, stop=("a",)),
        GenerationRequest("f", prompt(5), 29, SamplingParams(0.0, presence_penalty=0.5)),
    ]


@pytest.fixture(autouse=True)
def admit_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "ARRIVAL_QUIET_S", 0.0)


def test_alone_greedy_equals_mlx_lm_and_drafts_are_kept(llama: tuple[Any, Any]) -> None:
    model, _ = llama
    sched = scheduler(llama, "prompt_lookup")
    [sink] = serve(sched, [GenerationRequest("solo", LOOP, 48, SamplingParams(0.0))])
    expected = [int(t) for t, _ in generate_step(mx.array(LOOP), model, max_tokens=48)]
    assert sink.tokens == expected
    counters = sched.counters
    assert counters.accepted_drafts > 0, counters
    # Fewer passes than tokens: that is the point.
    assert counters.decode_row_steps < counters.tokens_generated, counters


def test_a_mixed_batch_gives_what_it_gives_without_speculation(llama: tuple[Any, Any]) -> None:
    plain = serve(scheduler(llama, None), mixed_requests())
    sched = scheduler(llama, "prompt_lookup")
    speculated = serve(sched, mixed_requests())
    for request, want, got in zip(mixed_requests(), plain, speculated, strict=True):
        assert got.tokens == want.tokens, request.request_id
        assert text_of(got) == text_of(want), request.request_id
        assert got.finish is not None and want.finish is not None
        assert got.finish.reason == want.finish.reason
        assert got.finish.usage == want.finish.usage
        want_lp = [lp for e in want.events if isinstance(e, TokenEvent) for lp in e.logprobs]
        got_lp = [lp for e in got.events if isinstance(e, TokenEvent) for lp in e.logprobs]
        assert [(g.token, g.text) for g in got_lp] == [(w.token, w.text) for w in want_lp]
        for g, w in zip(got_lp, want_lp, strict=True):
            assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
            assert [t for t, _, _ in g.top] == [t for t, _, _ in w.top]
    assert sched.counters.accepted_drafts > 0, sched.counters
    assert sched.counters.largest_batch >= 4


def test_a_row_joining_after_kept_drafts_leaves_them_to_their_row(llama: tuple[Any, Any]) -> None:
    """A request that joins while the running row's pending step holds kept drafts: those
    drafts are still emitted (they were once lost when the pending step was rebuilt)."""
    model, _ = llama
    sched = scheduler(llama, "prompt_lookup")
    first, second = ListSink(), ListSink()
    sched.insert(GenerationRequest("first", LOOP, 40, SamplingParams(0.0)), first)
    for _ in range(20):
        sched.step()
        pending = sched.batch.pending
        if pending is not None and pending.kept and pending.kept[0]:
            break
    else:
        raise AssertionError("no step kept a draft")
    later = [*LOOP[5:], 40, 41]
    sched.insert(GenerationRequest("second", later, 20, SamplingParams(0.0)), second)
    run_until_idle(sched, limit=400)
    assert first.tokens == [int(t) for t, _ in generate_step(mx.array(LOOP), model, max_tokens=40)]
    assert second.tokens == [
        int(t) for t, _ in generate_step(mx.array(later), model, max_tokens=20)
    ]


def test_seeded_sampling_is_reproducible_with_speculation(llama: tuple[Any, Any]) -> None:
    requests = [
        GenerationRequest(f"s{i}", LOOP, 30, SamplingParams(0.7, top_k=20, seed=5 + i))
        for i in range(3)
    ]
    first = serve(scheduler(llama, "prompt_lookup"), requests)
    again = serve(scheduler(llama, "prompt_lookup"), requests)
    assert [s.tokens for s in first] == [s.tokens for s in again]
    assert all(len(s.tokens) == 30 for s in first)


def test_a_seeded_row_drafts_alike_beside_rows_on_a_device_that_pipelines(
    llama: tuple[Any, Any],
) -> None:
    """Where the device pipelines, a batch that finds nothing to draft coasts (plain steps, no
    drafting) for a while; a seeded sampling row drafts whenever it has drafts, as it would
    alone, whether it runs beside rows that keep the batch drafting, joins a coasting batch or
    runs alone: the same seed gives the same output whatever else is running."""
    seeded = [
        GenerationRequest(f"s{i}", LOOP[: 12 + i], 30, SamplingParams(0.9, seed=3 + i))
        for i in range(3)
    ]
    alone = [
        serve(scheduler(llama, "prompt_lookup", pipelined=True), [r])[0].tokens for r in seeded
    ]
    greedy = [GenerationRequest(f"g{i}", LOOP[i:], 40, SamplingParams(0.0)) for i in range(2)]
    together = serve(scheduler(llama, "prompt_lookup", pipelined=True), [*greedy, *seeded])
    assert [s.tokens for s in together[len(greedy) :]] == alone
    # Joining a batch that coasts: rows that draft nothing (speculation off) make it coast.
    sched = scheduler(llama, "prompt_lookup", pipelined=True)
    for request in greedy:
        sched.insert(dataclasses.replace(request, speculative=False), ListSink())
    for _ in range(3):
        sched.step()
    assert sched.batch.coasting
    late = [ListSink() for _ in seeded]
    for request, sink in zip(seeded, late, strict=True):
        sched.insert(request, sink)
    run_until_idle(sched, limit=400)
    assert [s.tokens for s in late] == alone


def test_prefix_cache_gets_only_the_tokens_fed(llama: tuple[Any, Any]) -> None:
    """A row that stops inside a run of kept drafts leaves a cache of exactly its tokens: the
    next turn resumes from it and still equals mlx-lm."""
    model, _ = llama
    sched = scheduler(llama, "prompt_lookup")
    [first] = serve(sched, [GenerationRequest("t1", LOOP, 13, SamplingParams(0.0))])
    follow = LOOP + first.tokens + [21, 22]
    [second] = serve(sched, [GenerationRequest("t2", follow, 20, SamplingParams(0.0))])
    assert second.finish is not None and second.finish.usage.cached_tokens > 0
    expected = [int(t) for t, _ in generate_step(mx.array(follow), model, max_tokens=20)]
    assert second.tokens == expected


def test_ragged_rows_decode_as_they_would_alone(llama: tuple[Any, Any]) -> None:
    """Rows of different lengths, rewound by different amounts, give each row's own logits."""
    model, _ = llama
    prompts = [LOOP[:9], LOOP[3:20], LOOP[:14]]
    singles = []
    for prompt in prompts:
        cache = make_prompt_cache(model)
        model(mx.array([prompt]), cache=cache)
        singles.append(cache)
    ragged = [RaggedKVCache.merge([c[i] for c in singles]) for i in range(len(singles[0]))]
    step = mx.array([[30, 31, 32], [40, 41, 42], [50, 51, 52]])
    model(step, cache=ragged)
    for layer in ragged:
        layer.rewind([2, 0, 1])  # keep 1, 3 and 2 of the new positions
    kept = [[30], [40, 41, 42], [50, 51]]
    logits = model(mx.array([[60], [61], [62]]), cache=ragged)[:, -1]
    for row, prompt in enumerate(prompts):
        alone = make_prompt_cache(model)
        want = model(mx.array([prompt + kept[row] + [60 + row]]), cache=alone)[0, -1]
        assert mx.allclose(logits[row], want, atol=1e-4).item(), row
    extracted = ragged[0].extract(1)
    assert isinstance(extracted, KVCache) and extracted.offset == len(prompts[1]) + 4


def test_ngram_index_proposes_what_followed_the_latest_match() -> None:
    index = NgramIndex([1, 2, 3, 4, 5, 9, 1, 2, 3, 7])
    assert index.propose(3) == []  # "3 7" and "7" never occurred before
    index.extend([1, 2, 3])
    assert index.propose(3) == [7, 1, 2]  # "1 2 3" last seen before 7
    index.extend([4])
    assert index.propose(2) == [5, 9]  # "2 3 4": seen once


def test_while_no_drafting_pays_steps_run_pipelined(
    llama: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a device that pipelines, a speculative batch whose pricing finds no drafting that pays
    runs pipelined plain steps (coasting), then prices again: the tokens are plain decoding's,
    and a finished row leaves the prefix cache exactly its tokens (the next turn equals mlx-lm)."""
    model, _ = llama
    requests = mixed_requests()
    plain = serve(scheduler(llama, None), requests)
    monkeypatch.setattr(PassCost, "relative", lambda self, rows, width: float(width))
    coasting: list[bool] = []
    schedule = DecodeBatch.schedule

    def recording(self: DecodeBatch) -> Any:
        coasting.append(self.coasting)
        return schedule(self)

    monkeypatch.setattr(DecodeBatch, "schedule", recording)
    sched = scheduler(llama, "prompt_lookup", pipelined=True)
    assert sched.config.coast and not sched.config.pipelined
    sinks = serve(sched, requests)
    assert [s.tokens for s in sinks] == [s.tokens for s in plain]
    assert sched.counters.drafted_tokens == 0
    assert any(coasting) and not all(coasting)  # coasted, and priced again in between
    follow = LOOP + plain[0].tokens + [21, 22]
    [second] = serve(sched, [GenerationRequest("t2", follow, 20, SamplingParams(0.0))])
    assert second.finish is not None and second.finish.usage.cached_tokens > 0
    expected = [int(t) for t, _ in generate_step(mx.array(follow), model, max_tokens=20)]
    assert second.tokens == expected


def test_drafting_on_a_device_that_pipelines_changes_no_token(llama: tuple[Any, Any]) -> None:
    """Where drafting pays (flat pass costs), steps with drafts run in order and the batch may
    coast in between: the same tokens as plain decoding, drafts kept."""
    requests = mixed_requests()
    plain = serve(scheduler(llama, None), requests)
    sched = scheduler(llama, "prompt_lookup", pipelined=True)
    sinks = serve(sched, requests)
    assert [s.tokens for s in sinks] == [s.tokens for s in plain]
    assert sched.counters.accepted_drafts > 0


def test_ngram_index_prefers_the_longest_matching_context() -> None:
    # "2 3" last occurred before 9, but "7 1 2 3" (the longer suffix) occurred before 4.
    index = NgramIndex([7, 1, 2, 3, 4, 5, 8, 2, 3, 9, 6, 7, 1, 2, 3])
    assert index.propose(2) == [4, 5]
    assert NgramIndex([7, 1, 2, 3, 4, 5, 8, 2, 3, 9, 6, 7, 1, 2, 3], max_n=2).propose(2) == [9, 6]


def test_draft_length_adapts() -> None:
    length = DraftLength(16)
    assert length.current == 4 and length.acceptance == 0.5  # the prior
    length.record(4, 4)
    assert length.current == 8
    length.record(8, 8)
    length.record(16, 16)
    assert length.current == 16  # at most the maximum
    high = length.acceptance
    assert high > 0.9
    length.record(16, 1)
    assert length.current == 2 and length.acceptance < high
    low = DraftLength(8)
    for _ in range(5):
        low.record(4, 0)
    assert low.acceptance < 0.2
    before = low.acceptance
    low.record(0, 0)  # a step without drafts: back towards the prior
    assert before < low.acceptance < 0.5 and low.current == 1


def test_pass_cost_fits_its_timings() -> None:
    cost = PassCost()
    assert cost.relative(1, 8) == 1.0  # nothing known: flat
    cost.record(1, 0.070)
    cost.record(1, 0.070)
    assert cost.line() is None and cost.relative(1, 8) == 1.0  # one size: still nothing
    for positions in (4, 8, 2, 16):
        cost.record(positions, 10.0)  # each size's first pass, slow: not counted
        cost.record(positions, 0.060 + 0.010 * positions)
    base, per_position = cost.line() or (0.0, 0.0)
    assert base == pytest.approx(0.060) and per_position == pytest.approx(0.010)
    assert cost.relative(1, 8) == pytest.approx(0.14 / 0.07)
    assert cost.relative(8, 2) == pytest.approx(0.22 / 0.14)


def test_best_width_pays_for_the_positions_it_adds() -> None:
    flat, steep = (lambda width: 1.0), (lambda width: float(width))
    assert best_width([6, 3, 0], [0.9, 0.9, 0.5], flat) == 7  # free: verify every draft
    assert best_width([6, 3, 0], [0.9, 0.9, 0.5], steep) == 1  # each position a full step
    assert best_width([], [], flat) == 1
    gentle = lambda width: 1 + 0.1 * (width - 1)  # noqa: E731
    # One sure row among three unlikely ones: 9 positions yield ~12 tokens for 1.8 steps.
    assert best_width([8, 8, 8, 8], [1.0, 0.01, 0.01, 0.01], gentle) == 9
    # Four unlikely rows: one more position yields 4 x 0.05 tokens for 0.1 of a step.
    assert best_width([8, 8, 8, 8], [0.05, 0.05, 0.05, 0.05], gentle) == 1
    assert best_width([2, 2], [0.9, 0.9], steep, least=3) == 3  # a floor is kept


def test_seeded_sampling_rows_verify_all_they_proposed() -> None:
    """A seeded request's draws depend on its drafts: timings must not cut them."""

    def choice(temperature: float, seed: int | None) -> Any:
        return SimpleNamespace(
            speculation=SimpleNamespace(length=DraftLength(8)),
            sampler=SimpleNamespace(params=SamplingParams(temperature, seed=seed)),
        )

    rows = [choice(0.0, None), choice(0.8, 7), choice(0.8, None)]
    assert fit_to_pass(rows, [5, 3, 5], lambda width: float(width)) == [3, 3, 3]
    assert fit_to_pass(rows, [5, 0, 5], lambda width: float(width)) == [0, 0, 0]
    assert fit_to_pass(rows, [5, 3, 5], lambda width: 1.0) == [5, 3, 5]


def test_a_costly_pass_stops_drafting_and_changes_no_token(
    llama: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Priced so that each position costs a full step, no drafting pays: the batch runs plain
    steps only, with the greedy tokens of plain decoding."""
    requests = mixed_requests()
    plain = serve(scheduler(llama, None), requests)
    monkeypatch.setattr(PassCost, "relative", lambda self, rows, width: float(width))
    sched = scheduler(llama, "prompt_lookup")
    sinks = serve(sched, requests)
    assert [s.tokens for s in sinks] == [s.tokens for s in plain]
    assert sched.counters.drafted_tokens == 0


async def test_the_engine_thread_speculates_as_configured(tiny_model_dir: Path) -> None:
    """Through LLMEngine (models-file options as ChatLimits): the same greedy tokens with and
    without the per-request switch, and the counters /metrics reads."""
    limits = ChatLimits(speculative="prompt_lookup", speculative_tokens=5)
    engine = LLMEngine("tiny", tiny_model_dir, prefill_chunk=16, limits=limits)
    engine.start()
    try:
        await engine.wait_loaded()
        on = GenerationRequest("on", LOOP, 40, SamplingParams(0.0))
        off = GenerationRequest("off", LOOP, 40, SamplingParams(0.0), speculative=False)
        (_, with_drafts, _), (_, without, _) = await asyncio.gather(
            run(engine, on), run(engine, off)
        )
        assert with_drafts == without
        stats = engine.stats()
        assert stats.accepted_drafts > 0 and stats.drafted_tokens >= stats.accepted_drafts
        assert stats.decode_row_steps < stats.tokens_generated
    finally:
        engine.stop()


def test_caches_that_cannot_drop_drafts_turn_speculation_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """gemma3_text has sliding-window layers: the scheduler runs it without speculation, says so
    in the log, and still serves it (equal to mlx-lm)."""
    path = save_family_dir("gemma3_text", tmp_path / "gemma3")
    model, tokenizer = load(str(path))  # type: ignore[misc]
    with caplog.at_level("INFO", logger="engines.llm.scheduler_config"):
        sched = scheduler((model, tokenizer), "prompt_lookup")
    assert sched.config.speculative is None
    assert "speculative decoding off" in caplog.text
    [sink] = serve(sched, [GenerationRequest("w", LOOP, 12, SamplingParams(0.0))])
    expected = [int(t) for t, _ in generate_step(mx.array(LOOP), model, max_tokens=12)]
    assert sink.tokens == expected


def test_a_prediction_is_proposed_from_the_output_start_and_in_order() -> None:
    """The prediction reads as the prompt's continuation; a line it repeats is followed where
    the output is, not at its latest occurrence; it is looked up before the history."""
    prompt = [1, 2, 3, 4]
    index = NgramIndex(prompt, prediction=[5, 6, 7, 8, 9, 5, 6, 7, 10])
    assert index.propose(4) == [5, 6, 7, 8] and index.from_prediction
    index.extend([5, 6, 7, 8, 9, 5, 6, 7])
    assert index.propose(3) == [10]
    index = NgramIndex([1, 2, 3, 4, 1, 2], prediction=[3, 9, 1, 2, 7])
    index.extend([3, 9, 1, 2])
    assert index.propose(1) == [7]  # the history had [1, 2] → 3
    assert NgramIndex([1, 2, 3]).propose(2) == [] and not NgramIndex([1, 2]).from_prediction


def test_a_prediction_is_found_again_after_the_output_leaves_it() -> None:
    """Lines left out or added by the output: the prediction is picked up where the output
    meets it again, never before the last place it was proposed from."""
    line, other = [20, 21, 22], [30, 31, 32]
    prediction = [*line, 5, *other, 6, *line, 7]  # a line, another, the first again
    index = NgramIndex([1, 2], prediction=prediction)
    assert index.propose(2) == [20, 21]
    index.extend([*line, 6])  # the output left `5, *other` out: then `line` again
    index.extend(line)
    assert index.propose(1) == [7]
    index = NgramIndex([1, 2], prediction=prediction)
    assert index.propose(2) == [20, 21]
    index.extend([20, 21, 40, 41, 42])  # it wrote text of its own, then the prediction's again
    index.extend([22, 5, 30])
    assert index.propose(2) == [31, 32]
    index.extend([31, 32, 6, *line, 7])  # the prediction used up: nothing more from it
    index.propose(2)
    assert not index.from_prediction
    # Beside a draft model, only a prediction is looked up, not the history.
    assert NgramIndex([5, 6, 7, 5, 6]).propose(1) == [7]
    assert NgramIndex([5, 6, 7, 5, 6], copy_history=False).propose(1) == []


def follow(prompt: list[int], prediction: list[int], output: list[int]) -> tuple[int, int]:
    """A greedy row whose model writes `output`, drafting by prompt lookup with `prediction`:
    the prediction's tokens counted as kept, and the steps taken."""
    speculation = RowSpeculation(NgramIndex(prompt, prediction=prediction), DraftLength(8))
    row = SimpleNamespace(speculation=speculation)
    written, steps = output[:1], 0  # the first token comes from the prefill
    while len(written) < len(output):
        drafts = speculation.propose(written, 8)
        truth = output[len(written) :]
        kept = 0
        while kept < min(len(drafts), len(truth)) and drafts[kept] == truth[kept]:
            kept += 1
        result = RowResult(truth[: kept + 1], drafted=len(drafts), accepted=kept)
        record([row], [result])  # type: ignore[list-item]
        for _ in result.tokens:  # emitted, as Choice.accept does
            speculation.emitted()
        written, steps = written + truth[: kept + 1], steps + 1
    return speculation.prediction_kept, steps


def test_a_looping_output_counts_each_predicted_token_once() -> None:
    """An output that repeats its prediction's lines beyond it meets the same predicted
    tokens again and again: each is counted as kept once (rejected_prediction_tokens, the
    prediction's length less these, was negative)."""
    line = [5, 6, 7]
    kept, _ = follow([1, 2, 3], line * 3, line * 30)
    assert 0 < kept <= 9


def test_a_chance_match_before_the_output_meets_the_prediction_does_not_lose_it() -> None:
    """The reply opens with words of its own whose pair the prediction holds near its end: the
    draft proposed there is rejected, and the prediction is still followed from its start once
    the output meets it (it was looked up only after that chance match, and lost)."""
    prediction = [10, 11, 12, 13, 14, 15, 50, 51, 16, 17, 18, 19, 20, 21, 22, 23]
    kept, steps = follow([1, 2, 3], prediction, [50, 51, 52, *prediction])
    assert kept >= 10 and steps <= 8, (kept, steps)


def finish_of(sink: ListSink) -> FinishEvent:
    return next(e for e in sink.events if isinstance(e, FinishEvent))


def test_a_prediction_drafts_and_changes_no_token(llama: tuple[Any, Any]) -> None:
    """Predicted Outputs: the prompt holds nothing to copy, the prediction is the output (or
    noise); the tokens are those without it, and a right prediction is kept as drafts."""
    prompt = [(37 * i) % 190 + 20 for i in range(24)]
    [plain] = serve(scheduler(llama, None), [GenerationRequest("p", prompt, 40, GREEDY)])
    right, wrong = tuple(plain.tokens), tuple((t + 1) % 200 for t in plain.tokens)
    passes = []
    for prediction in (right, wrong):
        sched = scheduler(llama, "prompt_lookup")
        request = GenerationRequest("r", prompt, 40, GREEDY, prediction=prediction)
        [sink] = serve(sched, [request])
        assert sink.tokens == plain.tokens
        kept = finish_of(sink).usage.accepted_prediction_tokens
        assert kept <= sched.counters.accepted_drafts
        passes.append((kept, sched.counters.decode_row_steps))
    (right_kept, right_passes), (wrong_kept, wrong_passes) = passes
    assert right_kept >= 30 and right_passes <= 10 and wrong_kept == 0, passes
    assert wrong_passes >= 30, passes  # noise saves (almost) nothing


def test_kept_predicted_drafts_past_a_stop_are_not_counted(llama: tuple[Any, Any]) -> None:
    """A stop string inside a run of kept drafts ends the output there: the drafts kept after
    it are in no output, so usage's accepted_prediction_tokens leaves them out (it counted them,
    and came out above completion_tokens)."""
    prompt = [(37 * i) % 190 + 20 for i in range(24)]
    [plain] = serve(scheduler(llama, None), [GenerationRequest("p", prompt, 40, GREEDY)])
    text = text_of(plain)
    stop = text[len(text) // 3 :][:2]
    request = GenerationRequest(
        "r", prompt, 40, GREEDY, stop=(stop,), prediction=tuple(plain.tokens)
    )
    [without] = serve(scheduler(llama, None), [request])
    sched = scheduler(llama, "prompt_lookup")
    [sink] = serve(sched, [request])
    assert sink.tokens == without.tokens and len(sink.tokens) < len(plain.tokens)
    usage = finish_of(sink).usage
    # Every token but the first (the prompt's pass made it) can be a kept predicted draft.
    assert 0 < usage.accepted_prediction_tokens < usage.completion_tokens, usage
    assert sched.counters.accepted_drafts > usage.accepted_prediction_tokens  # drafts kept past


def test_a_looping_output_keeps_no_more_than_its_prediction(llama: tuple[Any, Any]) -> None:
    """The tiny llama loops on LOOP (one token, over and over); a prediction of its first 16
    tokens is met again and again by the prompt lookup: at most those 16 count as kept."""
    [plain] = serve(scheduler(llama, None), [GenerationRequest("p", LOOP, 80, GREEDY)])
    prediction = tuple(plain.tokens[:16])
    request = GenerationRequest("r", LOOP, 80, GREEDY, prediction=prediction)
    [sink] = serve(scheduler(llama, "prompt_lookup"), [request])
    assert sink.tokens == plain.tokens
    assert 0 < finish_of(sink).usage.accepted_prediction_tokens <= len(prediction)


def test_the_choices_of_a_request_share_one_built_index(
    llama: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """n choices index the prompt and the prediction once (a long prediction with n = 128 was
    indexed 128 times on the engine thread, stalling every stream); each choice still drafts
    from its own copy: the tokens are those without speculation, each keeps the prediction."""
    built: list[NgramIndex] = []

    class Counted(NgramIndex):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(scheduler_module, "NgramIndex", Counted)
    prompt = [(37 * i) % 190 + 20 for i in range(24)]
    [plain] = serve(scheduler(llama, None), [GenerationRequest("p", prompt, 40, GREEDY)])
    request = GenerationRequest("r", prompt, 40, GREEDY, n=3, prediction=tuple(plain.tokens))
    [sink] = serve(scheduler(llama, "prompt_lookup"), [request])
    finishes = [e for e in sink.events if isinstance(e, FinishEvent)]
    assert len(built) == 1 and len(finishes) == 3
    for index in range(3):
        events = [e for e in sink.events if isinstance(e, TokenEvent) and e.index == index]
        tokens = [t for e in events for t in e.token_ids]
        assert tokens == plain.tokens
    assert all(f.usage.accepted_prediction_tokens >= 30 for f in finishes), finishes
