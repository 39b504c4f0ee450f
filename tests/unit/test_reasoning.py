"""Reasoning blocks: the parser in any chunking, and `reasoning_content` / `reasoning` over HTTP
(streamed and not) on a scripted reasoning model."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import httpx
import pytest

from server.reasoning import ReasoningParser
from tests.fakes import FakeEngine
from tests.helpers import URL, chat_body


def split(text: str, opened: bool, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    parser = ReasoningParser(opened)
    reasoning = content = ""
    position = 0
    while position < len(text):
        size = rng.randint(1, 6)
        delta = parser.feed(text[position : position + size])
        reasoning, content = reasoning + delta.reasoning, content + delta.content
        position += size
    delta = parser.finish()
    return reasoning + delta.reasoning, content + delta.content


@pytest.mark.parametrize("seed", range(20))
def test_think_block_split_in_any_chunking(seed: int) -> None:
    assert split("<think>a < b, so </thin k>.</think>\n\nAnswer: b.", False, seed) == (
        "a < b, so </thin k>.",
        "Answer: b.",
    )
    assert split("plan first</think>The answer.", True, seed) == ("plan first", "The answer.")
    assert split("No thinking <think> here.", False, seed) == ("", "No thinking <think> here.")
    assert split("<think>cut off mid-thou", False, seed) == ("cut off mid-thou", "")


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(reply="Paris is in France.</think>Paris.", reasoning=True)


async def test_reasoning_fields_non_streamed(http: httpx.AsyncClient) -> None:
    response = await http.post(URL, json=chat_body(reasoning_effort="low"))
    message = response.json()["choices"][0]["message"]
    assert message["content"] == "Paris."
    assert message["reasoning_content"] == message["reasoning"] == "Paris is in France."


async def test_reasoning_fields_streamed(http: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    async with http.stream("POST", URL, json=chat_body(stream=True)) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in lines]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Paris is in France."
    assert "".join(d.get("reasoning", "") for d in deltas) == "Paris is in France."
    assert "".join(d.get("content") or "" for d in deltas) == "Paris."


async def test_template_kwargs_pass_through(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    fake_engine.reply = "Straight answer."
    body = chat_body(chat_template_kwargs={"enable_thinking": False}, reasoning_effort="high")
    response = await http.post(URL, json=body)
    assert fake_engine.template_kwargs_seen == {
        "enable_thinking": False,
        "reasoning_effort": "high",
    }
    message = response.json()["choices"][0]["message"]
    assert message["content"] == "Straight answer." and "reasoning_content" not in message


@pytest.mark.parametrize(
    ("effort", "tool_format", "seen"),
    [
        ("minimal", "json_tools", {"reasoning_effort": "minimal", "enable_thinking": False}),
        ("high", "json_tools", {"reasoning_effort": "high", "enable_thinking": True}),
        ("low", "harmony", {"reasoning_effort": "low"}),  # gpt-oss's template reads the effort
    ],
)
async def test_reasoning_effort_is_the_thinking_switch(
    http: httpx.AsyncClient, fake_engine: FakeEngine, effort: str, tool_format: str, seen: Any
) -> None:
    assert fake_engine.info is not None
    fake_engine.info = dataclasses.replace(fake_engine.info, tool_format=tool_format)
    fake_engine.reply = "Paris."
    response = await http.post(URL, json=chat_body(reasoning_effort=effort))
    assert response.status_code == 200
    assert fake_engine.template_kwargs_seen == seen
