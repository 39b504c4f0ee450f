"""A reasoning model's thinking as the reasoning item's `summary` where the request asks for a
summary (`reasoning.summary`), on a scripted engine whose template opens a `<think>` block:
the item's `summary_text` and `reasoning_text` hold the same reasoning, streamed as OpenAI's
summary events; without a summary asked for, the item and stream are as they were."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.fakes import FakeEngine
from tests.helpers import assert_openai_error, responses_events

URL = "/v1/responses"
THOUGHT = "The user asks for the capital of France, which is Paris."
REPLY = f"{THOUGHT}</think>Paris."


@pytest.fixture
def fake_engine() -> FakeEngine:
    engine = FakeEngine(context_length=4096, reply=REPLY, reasoning=True)
    engine.info = dataclasses.replace(engine.loaded_info(), reasoning=True)
    return engine


@pytest.mark.parametrize(
    "reasoning",
    [{"summary": "auto"}, {"summary": "concise"}, {"summary": "detailed", "effort": "high"},
     {"generate_summary": "auto"}],
)  # fmt: skip
async def test_the_summary_is_the_reasoning(client: AsyncOpenAI, reasoning: Any) -> None:
    response = await client.responses.create(model="fake", input="capital?", reasoning=reasoning)
    item, message = response.output
    assert item.type == "reasoning" and message.type == "message"
    assert [(part.type, part.text) for part in item.summary] == [("summary_text", THOUGHT)]
    assert item.content is not None
    assert [(part.type, part.text) for part in item.content] == [("reasoning_text", THOUGHT)]
    assert response.output_text == "Paris."


@pytest.mark.parametrize("reasoning", [None, {"effort": "low"}, {"summary": "none"}])
async def test_without_a_summary_asked_for_it_stays_empty(
    http: httpx.AsyncClient, reasoning: Any
) -> None:
    """(`"none"` is no value of the spec's; Codex's config has it, so it is read as no summary.)"""
    body = {"model": "fake", "input": "capital?", "reasoning": reasoning}
    response = await http.post(URL, json=body)
    assert response.status_code == 200, response.text
    item = response.json()["output"][0]
    assert item["type"] == "reasoning" and item["summary"] == []
    assert item["content"] == [{"type": "reasoning_text", "text": THOUGHT}]


async def test_the_summary_streams_as_openais_summary_events(http: httpx.AsyncClient) -> None:
    events = await responses_events(
        http, {"model": "fake", "input": "capital?", "reasoning": {"summary": "auto"}}
    )
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    item_id = events[2]["item"]["id"]
    reasoning = [e for e in events if e.get("item_id") == item_id]
    kinds = [e["type"] for e in reasoning]
    deltas = kinds.count("response.reasoning_summary_text.delta")
    assert deltas >= 1 and kinds == [
        "response.reasoning_summary_part.added",
        *["response.reasoning_summary_text.delta"] * deltas,
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
    ], kinds
    added, *text_deltas, text_done, part_done = reasoning
    assert added["part"] == {"type": "summary_text", "text": ""}
    assert all(e["summary_index"] == 0 and e["output_index"] == 0 for e in reasoning)
    assert "".join(e["delta"] for e in text_deltas) == THOUGHT == text_done["text"]
    assert part_done["part"] == {"type": "summary_text", "text": THOUGHT}
    # The item around them: announced empty, done with both its summary and its content.
    assert events[2]["type"] == "response.output_item.added"
    assert events[2]["item"]["summary"] == []
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"]["summary"] == [{"type": "summary_text", "text": THOUGHT}]
    assert done["item"]["content"] == [{"type": "reasoning_text", "text": THOUGHT}]
    assert events.index(done) == events.index(part_done) + 1
    final = events[-1]["response"]
    assert final["output"][0] == done["item"]


async def test_the_stream_helper_assembles_the_summary(client: AsyncOpenAI) -> None:
    async with client.responses.stream(
        model="fake", input="capital?", reasoning={"summary": "auto"}
    ) as stream:
        deltas = [
            e.delta async for e in stream if e.type == "response.reasoning_summary_text.delta"
        ]
        final = await stream.get_final_response()
    item = final.output[0]
    assert item.type == "reasoning"
    assert "".join(deltas) == THOUGHT == item.summary[0].text
    assert final.output_text == "Paris."


async def test_without_a_summary_the_stream_is_reasoning_text(http: httpx.AsyncClient) -> None:
    events = await responses_events(http, {"model": "fake", "input": "capital?"})
    kinds = {e["type"] for e in events}
    assert "response.reasoning_text.delta" in kinds
    assert not any("summary" in kind for kind in kinds)
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"]["summary"] == []


async def test_an_unknown_summary_level_is_a_400(http: httpx.AsyncClient) -> None:
    body = {"model": "fake", "input": "hi", "reasoning": {"summary": "verbose"}}
    assert_openai_error(await http.post(URL, json=body), 400, "reasoning.summary")
