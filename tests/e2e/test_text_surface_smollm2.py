"""End-to-end: completions, logprobs, n, penalties and logit_bias on the embedded SmolLM2,
through the official SDK in strict mode (raw HTTP only where the SDK's types are narrower than
OpenAI's API: streamed completions and echo logprobs)."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest

from engines.weights.embedded import SMOLLM2
from tests.helpers import LiveServer

MODEL = SMOLLM2.name
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_completion_continues_a_text_prompt(live: LiveServer) -> None:
    completion = live.client().completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert "Paris" in completion.choices[0].text
    assert completion.usage is not None and completion.usage.completion_tokens == 4


def test_completion_batch_of_prompts_and_token_ids(live: LiveServer) -> None:
    client = live.client()
    tokens = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=1, temperature=0, logprobs=0
    ).choices[0]
    assert tokens.logprobs is not None and tokens.logprobs.tokens
    batch = client.completions.create(
        model=MODEL,
        prompt=["The capital of France is", "One, two, three,"],
        max_tokens=3,
        temperature=0,
        n=2,
    )
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text  # greedy: both choices agree
    assert batch.choices[0].text != batch.choices[2].text


def test_completion_logprobs_concatenate_to_the_text(live: LiveServer) -> None:
    choice = (
        live.client()
        .completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0, logprobs=3
        )
        .choices[0]
    )
    assert choice.logprobs is not None
    assert "".join(choice.logprobs.tokens or []) == choice.text
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs or [])
    for top, chosen in zip(
        choice.logprobs.top_logprobs or [], choice.logprobs.token_logprobs or [], strict=True
    ):
        assert len(top) == 3 and max(top.values()) >= chosen - 1e-5  # greedy picks the best


def test_echo_scores_the_prompt_like_an_eval_harness(live: LiveServer) -> None:
    body = {
        "model": MODEL,
        "prompt": "The capital of France is Paris",
        "max_tokens": 0,
        "echo": True,
        "logprobs": 1,
        "temperature": 0,
    }
    choice = httpx.post(f"{live.url}/v1/completions", json=body, timeout=60).json()["choices"][0]
    assert choice["text"] == body["prompt"]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == body["prompt"]
    assert logprobs["token_logprobs"][0] is None
    assert all(math.isfinite(v) and v <= 0 for v in logprobs["token_logprobs"][1:])
    assert logprobs["token_logprobs"][-1] > -3  # " Paris" is likely after this context


def test_streamed_completion_matches_non_streamed(live: LiveServer) -> None:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    whole = httpx.post(f"{live.url}/v1/completions", json=body, timeout=60).json()
    text = ""
    with httpx.stream(
        "POST", f"{live.url}/v1/completions", json={**body, "stream": True}, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0]["text"]
    assert text == whole["choices"][0]["text"]


def test_chat_logprobs_and_top_logprobs(live: LiveServer) -> None:
    choice = (
        live.client()
        .chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            temperature=0,
            logprobs=True,
            top_logprobs=5,  # type: ignore[arg-type]
        )
        .choices[0]
    )
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    for entry in content:
        assert len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-5
        assert bytes(entry.bytes or []).decode("utf-8", "replace")


def test_chat_n_with_seed_is_reproducible(live: LiveServer) -> None:
    client = live.client()
    ask = {
        "model": MODEL,
        "messages": FRANCE,
        "n": 3,
        "seed": 7,
        "temperature": 1.2,
        "max_tokens": 16,
    }
    first = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    again = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1
    assert first.usage is not None
    assert 3 <= first.usage.completion_tokens <= 3 * 16  # summed over the three choices
    stream = client.chat.completions.create(stream=True, **ask)  # type: ignore[call-overload]
    streamed = {0: "", 1: "", 2: ""}
    for chunk in stream:
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert [streamed[i] for i in range(3)] == texts


def test_logit_bias_bans_paris(live: LiveServer) -> None:
    engine = live.pool.engine(MODEL)
    paris = engine.tokenizer.encode(" Paris", add_special_tokens=False)  # type: ignore[attr-defined]
    bias = {str(t): -100 for t in paris}
    text = (
        live.client()
        .chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            temperature=0,
            logit_bias=bias,
            max_tokens=20,  # type: ignore[arg-type]
        )
        .choices[0]
        .message.content
    )
    assert text and " Paris" not in text


def test_penalties_change_a_repetitive_answer(live: LiveServer) -> None:
    client = live.client()
    ask = {
        "model": MODEL,
        "prompt": "the cat the cat the cat the cat",
        "temperature": 0,
        "max_tokens": 20,
    }
    plain = client.completions.create(**ask).choices[0].text  # type: ignore[call-overload]
    penalised = (
        client.completions.create(  # type: ignore[call-overload]
            frequency_penalty=2.0, presence_penalty=2.0, **ask
        )
        .choices[0]
        .text
    )
    extra = {"repetition_penalty": 1.8}  # an extension: sent with the SDK's extra_body
    repeated = client.completions.create(extra_body=extra, **ask).choices[0].text  # type: ignore[call-overload]
    assert plain.count("cat") >= 5, plain
    assert penalised.count("cat") < plain.count("cat")
    assert repeated.count("cat") < plain.count("cat")


def test_suffix_on_a_model_without_fim_tokens_is_a_clear_400(live: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        live.client().completions.create(model=MODEL, prompt="def f(", suffix="):")
    assert raised.value.status_code == 400
    body = raised.value.body
    assert isinstance(body, dict) and body["param"] == "suffix"
    assert "fill-in-the-middle" in body["message"]
