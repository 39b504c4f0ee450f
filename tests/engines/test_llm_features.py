"""Engine features on the tiny random model: logprobs, logit bias, n, penalties, FIM, scoring."""

from __future__ import annotations

import threading
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache

from engines.errors import InvalidRequest
from engines.llm.engine import LLMEngine
from engines.types import (
    FinishEvent,
    GenerationRequest,
    PromptEvent,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from tests.helpers import PROMPT, reference_greedy


async def events_of(engine: LLMEngine, request: GenerationRequest) -> list[Any]:
    return [event async for event in engine.submit(request)]


def choices(events: list[Any]) -> dict[int, tuple[str, list[int], list[TokenLogprob]]]:
    out: dict[int, tuple[str, list[int], list[TokenLogprob]]] = {}
    for event in events:
        if isinstance(event, TokenEvent):
            text, tokens, logprobs = out.get(event.index, ("", [], []))
            out[event.index] = (
                text + event.text,
                tokens + event.token_ids,
                logprobs + event.logprobs,
            )
    return out


def reference_logits(engine: LLMEngine, tokens: list[int]) -> np.ndarray:
    """Model logits at every position of `tokens`, on a thread with its own stream."""
    result: list[np.ndarray] = []

    def work() -> None:
        from engines.weights.checkpoint import load_checkpoint

        with mx.stream(mx.new_stream(mx.cpu)):
            model, _ = load_checkpoint(engine.path)
            logits = model(mx.array([tokens]), cache=make_prompt_cache(model))
            result.append(np.array(logits[0].astype(mx.float32)))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return result[0]


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_logprobs_equal_reference_log_softmax(engine: LLMEngine, temperature: float) -> None:
    request = GenerationRequest(
        "lp", PROMPT, 6, SamplingParams(temperature=temperature, seed=5), logprobs=3
    )
    text, tokens, logprobs = choices(await events_of(engine, request))[0]
    assert [entry.token for entry in logprobs] == tokens
    assert "".join(entry.text for entry in logprobs) == text
    reference = log_softmax(reference_logits(engine, PROMPT + tokens))
    for step, entry in enumerate(logprobs):
        row = reference[len(PROMPT) - 1 + step]
        assert entry.logprob == pytest.approx(float(row[entry.token]), abs=1e-4)
        expected_top = np.argsort(-row)[:3].tolist()
        assert [t for t, _, _ in entry.top] == expected_top
        for token, _, value in entry.top:
            assert value == pytest.approx(float(row[token]), abs=1e-4)


async def test_logit_bias_minus_100_bans_a_token(engine: LLMEngine) -> None:
    favourite = reference_greedy(engine, 1)[0]
    banned = SamplingParams(temperature=0.0, logit_bias=((favourite, -100.0),))
    _, tokens, _ = choices(await events_of(engine, GenerationRequest("b", PROMPT, 12, banned)))[0]
    assert favourite not in tokens
    forced = SamplingParams(temperature=1.0, seed=1, logit_bias=((77, 100.0),))
    _, tokens, _ = choices(await events_of(engine, GenerationRequest("f", PROMPT, 5, forced)))[0]
    assert tokens == [77] * 5


async def test_logit_bias_outside_vocab_is_refused(engine: LLMEngine) -> None:
    params = SamplingParams(logit_bias=((engine.vocab_size, 1.0),))
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        engine.submit(GenerationRequest("x", PROMPT, 2, params))


async def test_n_choices_with_seed_are_reproducible_and_distinct(engine: LLMEngine) -> None:
    request = GenerationRequest("n", PROMPT, 10, SamplingParams(temperature=1.0, seed=42), n=3)
    first = await events_of(engine, request)
    again = await events_of(engine, request)
    assert choices(first) == choices(again)
    token_lists = [choices(first)[i][1] for i in range(3)]
    assert len({tuple(t) for t in token_lists}) == 3
    finishes = [e for e in first if isinstance(e, FinishEvent)]
    assert sorted(e.index for e in finishes) == [0, 1, 2]
    single = GenerationRequest("1", PROMPT, 10, SamplingParams(temperature=1.0, seed=42))
    assert choices(await events_of(engine, single))[0][1] == token_lists[0]
    assert engine.active == 0


async def test_greedy_n_choices_share_the_prompt_and_agree(engine: LLMEngine) -> None:
    request = GenerationRequest("g", PROMPT, 8, SamplingParams(temperature=0.0), n=2)
    result = choices(await events_of(engine, request))
    assert result[0][1] == result[1][1] == reference_greedy(engine, 8)


async def test_frequency_penalty_discourages_repeats(engine: LLMEngine) -> None:
    plain = GenerationRequest("p", PROMPT, 40, SamplingParams(temperature=0.0))
    _, tokens, _ = choices(await events_of(engine, plain))[0]
    penalised = GenerationRequest(
        "q",
        PROMPT,
        40,
        SamplingParams(temperature=0.0, frequency_penalty=2.0, presence_penalty=2.0),
    )
    _, penalised_tokens, _ = choices(await events_of(engine, penalised))[0]
    assert len(set(penalised_tokens)) > len(set(tokens))


async def test_presence_penalty_matches_openai_definition(engine: LLMEngine) -> None:
    """logit[t] -= presence * (count[t] > 0) + frequency * count[t], counted over output only."""
    params = SamplingParams(temperature=0.0, presence_penalty=0.7, frequency_penalty=0.3)
    request = GenerationRequest("d", PROMPT, 5, params, logprobs=0)
    _, tokens, logprobs = choices(await events_of(engine, request))[0]
    reference = reference_logits(engine, PROMPT + tokens)
    counts: dict[int, int] = {}
    for step, entry in enumerate(logprobs):
        row = reference[len(PROMPT) - 1 + step].copy()
        for token, count in counts.items():
            row[token] -= 0.7 + 0.3 * count
        assert entry.token == int(np.argmax(row))
        assert entry.logprob == pytest.approx(float(log_softmax(row)[entry.token]), abs=1e-4)
        counts[entry.token] = counts.get(entry.token, 0) + 1


async def test_repetition_penalty_changes_greedy_output(engine: LLMEngine) -> None:
    plain = choices(
        await events_of(engine, GenerationRequest("a", PROMPT, 30, SamplingParams(temperature=0.0)))
    )
    strong = SamplingParams(temperature=0.0, repetition_penalty=3.0)
    penalised = choices(await events_of(engine, GenerationRequest("b", PROMPT, 30, strong)))
    assert plain[0][1] != penalised[0][1]


async def test_prompt_scoring_matches_reference(engine: LLMEngine) -> None:
    request = GenerationRequest(
        "s", PROMPT, 0, SamplingParams(temperature=0.0), logprobs=2, prompt_logprobs=True
    )
    events = await events_of(engine, request)
    assert isinstance(events[0], PromptEvent)
    assert isinstance(events[-1], FinishEvent) and events[-1].reason == "length"
    assert events[-1].usage.completion_tokens == 0
    scored = events[0].logprobs
    assert [e.token for e in scored] == PROMPT
    assert scored[0].logprob is None
    reference = log_softmax(reference_logits(engine, PROMPT))
    for position in range(1, len(PROMPT)):
        expected = float(reference[position - 1][PROMPT[position]])
        assert scored[position].logprob == pytest.approx(expected, abs=1e-4)
    assert "".join(e.text for e in scored) == engine.tokenizer.decode(PROMPT)


async def test_logprob_texts_stay_aligned_with_a_stop_string(engine: LLMEngine) -> None:
    greedy = SamplingParams(temperature=0.0)
    plain = await events_of(engine, GenerationRequest("a", PROMPT, 24, greedy))
    full, _, _ = choices(plain)[0]
    assert plain[-1].stop_sequence is None  # ended by length
    stop = full.strip()[4:6]
    never = "\x00never"
    request = GenerationRequest("b", PROMPT, 24, greedy, stop=(never, stop), logprobs=0)
    stopped = await events_of(engine, request)
    text, _, logprobs = choices(stopped)[0]
    assert text == full[: full.index(stop)]
    assert "".join(e.text for e in logprobs) == text
    assert (stopped[-1].reason, stopped[-1].stop_sequence) == ("stop", stop)  # which one matched


def test_fim_prompt_uses_the_models_tokens(engine: LLMEngine) -> None:
    assert engine.info is not None and engine.info.fim_tokens == (
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
    )
    tokens = engine.encode_fim("ab", "cd")
    vocab = engine.tokenizer.vocab
    assert tokens[0] == vocab["<|fim_prefix|>"] and tokens[-1] == vocab["<|fim_middle|>"]
    assert vocab["<|fim_suffix|>"] in tokens
