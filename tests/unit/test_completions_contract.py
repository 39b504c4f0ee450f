"""The HTTP contract of /v1/completions on a scripted fake engine (one character per token)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.fakes import FakeEngine
from tests.helpers import assert_openai_error

URL = "/v1/completions"


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "fake", "prompt": "Say:", **fields}


async def test_completion_through_strict_sdk(client: AsyncOpenAI) -> None:
    completion = await client.completions.create(model="fake", prompt="Say:", max_tokens=5)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Hello"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4 and completion.usage.completion_tokens == 5


async def test_default_max_tokens_is_16(client: AsyncOpenAI, fake_engine: FakeEngine) -> None:
    await client.completions.create(model="fake", prompt="x")
    assert fake_engine.requests[-1].max_tokens == 16


async def test_prompt_forms_and_choice_indices(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    many = await client.completions.create(model="fake", prompt=["a", "bb"], n=2, max_tokens=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert all(c.text == "He" for c in many.choices)
    assert many.usage is not None and many.usage.prompt_tokens == 3
    assert many.usage.completion_tokens == 8
    ids = await client.completions.create(model="fake", prompt=[72, 105], max_tokens=1)
    assert fake_engine.requests[-1].prompt_tokens == [72, 105]
    assert ids.choices[0].text == "H"
    batch = await client.completions.create(model="fake", prompt=[[72], [105, 106]], max_tokens=1)
    assert [c.index for c in batch.choices] == [0, 1]


async def test_echo_prepends_the_prompt(client: AsyncOpenAI) -> None:
    completion = await client.completions.create(
        model="fake", prompt="Say:", max_tokens=3, echo=True
    )
    assert completion.choices[0].text == "Say:Hel"


async def test_echo_with_logprobs_scores_the_prompt(http: httpx.AsyncClient) -> None:
    """Raw HTTP: the first prompt token's logprob is null, as OpenAI's API returns it; the
    SDK's types (list of float) are narrower than the API here, so strict mode would reject it."""
    response = await http.post(URL, json=body(max_tokens=0, echo=True, logprobs=1))
    choice = response.json()["choices"][0]
    assert choice["text"] == "Say:"
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == ["S", "a", "y", ":"]
    assert choice["logprobs"]["token_logprobs"] == [None, -2.0, -2.0, -2.0]
    assert choice["logprobs"]["top_logprobs"][0] is None
    assert choice["logprobs"]["text_offset"] == [0, 1, 2, 3]


async def test_legacy_logprobs_shape(client: AsyncOpenAI) -> None:
    completion = await client.completions.create(model="fake", prompt="x", max_tokens=3, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["H", "e", "l"]
    assert logprobs.token_logprobs == [-0.5, -0.5, -0.5]
    assert logprobs.top_logprobs == [{"x": -1.0, "y": -2.0}] * 3
    assert logprobs.text_offset == [0, 1, 2]


async def test_streamed_completion_with_usage(loose_client: AsyncOpenAI) -> None:
    stream = await loose_client.completions.create(
        model="fake",
        prompt="Say:",
        max_tokens=5,
        stream=True,
        echo=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Say:Hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["length"]


async def test_streamed_logprob_offsets_continue(loose_client: AsyncOpenAI) -> None:
    stream = await loose_client.completions.create(
        model="fake", prompt="x", max_tokens=4, stream=True, logprobs=0
    )
    offsets = [
        offset
        async for c in stream
        for choice in c.choices
        if choice.logprobs
        for offset in choice.logprobs.text_offset or []
    ]
    assert offsets == [0, 1, 2, 3]


@pytest.mark.parametrize("fake_engine", [FakeEngine(fim_tokens=("<P>", "<S>", "<M>"))])
async def test_suffix_builds_a_fim_prompt(http: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    response = await http.post(URL, json=body(prompt="def f(", suffix="):\n", max_tokens=2))
    assert response.status_code == 200
    assert fake_engine.requests[-1].prompt_tokens == [ord(c) for c in "<P>def f(<S>):\n<M>"]


async def test_suffix_without_fim_tokens_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post(URL, json=body(suffix="x"))
    assert_openai_error(response, 400, "suffix")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True, "suffix": "x"}, "echo"),
        ({"n": 9, "prompt": ["a", "b"]}, "prompt"),
        ({"max_tokens": 100}, "max_tokens"),
        ({"prompt": "x" * 70}, "prompt"),
    ],
)
async def test_bad_completion_requests(
    http: httpx.AsyncClient, fields: dict[str, Any], param: str
) -> None:
    assert_openai_error(await http.post(URL, json=body(**fields)), 400, param)
