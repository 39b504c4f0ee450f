"""`POST /v1/responses/compact` on a scripted engine, through the strict OpenAI SDK and raw HTTP:
the summary is the model's answer to the compaction prompt after the conversation, the
`compaction` item it comes back in stands for the user messages and that summary when sent in a
later request's `input` (also stored, and compacted again), and bad input is a 400."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from server.compaction_content import PREFIX, SUMMARY_HEADING, Compacted, decode, encode
from server.responses_compaction import COMPACTION_PROMPT, SUMMARY_MAX_TOKENS
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import assert_openai_error
from tests.unit.test_images_contract import data_uri, png

URL = "/v1/responses"
SUMMARY = "The user greeted and asked for 2+2; the answer was 4."
CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "Hello there!"},
    {"role": "user", "content": "2+2?"},
    {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"a": 2, "b": 2}'},
    {"type": "function_call_output", "call_id": "c1", "output": "4"},
    {"role": "assistant", "content": "4"},
]
# The conversation as the fake engine renders it (its template shows no tool calls).
RENDERED = "<user>hi<assistant>Hello there!<user>2+2?<assistant><tool>4<assistant>4"


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(context_length=4096, reply=SUMMARY)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, max_body_bytes=1 << 20)


def prompt_of(engine: FakeEngine) -> str:
    return engine.decode(engine.requests[-1].prompt_tokens)


def summary_message(summary: str) -> str:
    return f"<user>{SUMMARY_HEADING}\n\n{summary}"


async def compacted_items(client: AsyncOpenAI, **kwargs: Any) -> list[dict[str, Any]]:
    compacted = await client.responses.compact(model="fake", **kwargs)
    return [item.to_dict() for item in compacted.output]


async def test_the_model_writes_the_summary_of_the_conversation(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    compacted = await client.responses.compact(
        model="fake",
        instructions="Be brief.",
        input=CONVERSATION,  # type: ignore[arg-type]
    )
    assert compacted.object == "response.compaction" and compacted.id.startswith("resp_")
    [item] = compacted.output
    assert item.type == "compaction" and item.id.startswith("cmp_")
    # The summary is the answer to the prompt, after the whole conversation.
    assert prompt_of(fake_engine) == f"<system>Be brief.{RENDERED}<user>{COMPACTION_PROMPT}"
    user_texts = [message["content"] for message in decode(item.encrypted_content).messages]
    assert decode(item.encrypted_content).summary == SUMMARY and user_texts == ["hi", "2+2?"]
    assert compacted.usage.input_tokens == len(fake_engine.requests[-1].prompt_tokens)
    assert compacted.usage.output_tokens == len(SUMMARY)
    assert compacted.usage.total_tokens == compacted.usage.input_tokens + len(SUMMARY)


async def test_a_compaction_in_input_stands_for_the_user_messages_and_the_summary(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    """What OpenAI's compacted output is (the user messages, then the summary), in one item."""
    output = await compacted_items(client, input=CONVERSATION)
    await client.responses.create(
        model="fake",
        input=[*output, {"role": "user", "content": "and 3+3?"}],  # type: ignore[list-item]
    )
    expected = f"<user>hi<user>2+2?{summary_message(SUMMARY)}<user>and 3+3?"
    assert prompt_of(fake_engine) == expected


async def test_compacting_again_carries_every_user_message_and_summarizes_the_summary(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    first = await compacted_items(client, input=CONVERSATION)
    fake_engine.reply = "Sums were asked for: 2+2 is 4, 3+3 is 6."
    later = [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]
    second = await compacted_items(client, input=[*first, *later])
    # The second summary was written from the first one, which is not carried as a message.
    seen = f"<user>hi<user>2+2?{summary_message(SUMMARY)}<user>3+3?<assistant>6"
    assert prompt_of(fake_engine) == f"{seen}<user>{COMPACTION_PROMPT}"
    compaction = decode(second[0]["encrypted_content"])
    assert [m["content"] for m in compaction.messages] == ["hi", "2+2?", "3+3?"]
    assert compaction.summary == fake_engine.reply


async def test_the_summary_is_the_answer_not_the_reasoning(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    assert fake_engine.info is not None
    fake_engine.info = dataclasses.replace(fake_engine.info, reasoning=True)
    fake_engine.reasoning = True  # its template opens the <think> block
    fake_engine.reply = f"Let me see what happened.</think>\n{SUMMARY}\n"
    [item] = await compacted_items(client, input=CONVERSATION)
    assert decode(item["encrypted_content"]).summary == SUMMARY


async def test_a_stored_conversation_keeps_the_compaction_item(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    """Stored, listed as the item it is, and expanded again where `previous_response_id`
    continues the conversation; `previous_response_id` also names what to compact."""
    output = await compacted_items(client, input=CONVERSATION)
    created = await client.responses.create(
        model="fake",
        input=[*output, {"role": "user", "content": "next"}],  # type: ignore[list-item]
    )
    listed = [item async for item in client.responses.input_items.list(created.id, order="asc")]
    assert listed[0].type == "compaction"
    assert listed[0].encrypted_content == output[0]["encrypted_content"]
    assert listed[0].id == output[0]["id"]
    await client.responses.create(model="fake", input="more", previous_response_id=created.id)
    expanded = f"<user>hi<user>2+2?{summary_message(SUMMARY)}"
    assert prompt_of(fake_engine) == f"{expanded}<user>next<assistant>{SUMMARY}<user>more"
    again = await client.responses.compact(model="fake", previous_response_id=created.id)
    [item] = again.output
    assert item.type == "compaction"
    compaction = decode(item.encrypted_content)
    assert [m["content"] for m in compaction.messages] == ["hi", "2+2?", "next"]


@pytest.mark.parametrize("fake_engine", [FakeEngine(context_length=900)], ids=["900"])
async def test_a_conversation_too_long_is_summarized_from_its_latest_turns(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    """The oldest turns that do not fit with the prompt are left out of what the model reads;
    their user messages are still carried."""
    conversation = []
    for turn in range(8):
        conversation += [
            {"role": "user", "content": f"question {turn}"},
            {"role": "assistant", "content": f"answer {turn} " + "y" * 60},
        ]
    [item] = await compacted_items(client, input=conversation)
    prompt = prompt_of(fake_engine)
    assert "question 0" not in prompt and "question 7" in prompt
    assert prompt.endswith(COMPACTION_PROMPT) and len(prompt) < 900
    carried = [m["content"] for m in decode(item["encrypted_content"]).messages]
    assert carried == [f"question {turn}" for turn in range(8)]


@pytest.mark.parametrize("fake_engine", [FakeEngine(context_length=900)], ids=["900"])
@pytest.mark.parametrize("path", ["/compact", ""], ids=["compact", "create"])
async def test_a_compaction_too_long_to_read_is_an_oldest_turn(
    http: httpx.AsyncClient, fake_engine: FakeEngine, path: str
) -> None:
    """A compaction begins with a user message (those it carries, or its summary), so it
    begins a turn: where it does not fit it is dropped as the oldest, and the conversation goes
    on (compacted again, or answered with `truncation: "auto"`). It was part of no turn: the
    conversation was a 400 however it went on, since its user messages only grow."""
    long_ago = encode(Compacted("old summary", [{"role": "user", "content": "x" * 1000}]))
    item = {"type": "compaction", "encrypted_content": long_ago}
    body = {"model": "fake", "input": [item, {"role": "user", "content": "next"}]}
    if not path:
        body["truncation"] = "auto"
    response = await http.post(URL + path, json=body)
    assert response.status_code == 200, response.text
    prompt = prompt_of(fake_engine)
    assert "next" in prompt and "old summary" not in prompt


@pytest.mark.parametrize(
    "fake_engine", [FakeEngine(context_length=4096), FakeEngine(context_length=10_000)],
    ids=["4096", "10000"],
)  # fmt: skip
async def test_the_summary_is_limited(client: AsyncOpenAI, fake_engine: FakeEngine) -> None:
    """To `SUMMARY_MAX_TOKENS`, or the room left in the context where that is less: a model
    that does not stop must not fill the context."""
    await client.responses.compact(model="fake", input=CONVERSATION)  # type: ignore[arg-type]
    request = fake_engine.requests[-1]
    room = fake_engine.loaded_info().context_length - len(request.prompt_tokens)
    assert request.max_tokens == min(SUMMARY_MAX_TOKENS, room)


async def test_fields_that_change_nothing_are_named(http: httpx.AsyncClient) -> None:
    body = {"model": "fake", "input": "hi", "prompt_cache_key": "k", "tools": []}
    response = await http.post(f"{URL}/compact", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-mlxd-ignored-fields"] == "prompt_cache_key,tools"


def damaged(payload: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(payload).decode()


NOT_A_MESSAGE = encode(Compacted("s", [{"role": "wizard", "content": "x"}]))
BAD_COMPACTIONS = {
    "openai's": "gAAAAABpM0Yj-abc=",
    "not base64": PREFIX + "%%%",
    "not json": damaged(b"{"),
    "no summary": damaged(json.dumps({"messages": []}).encode()),
    "too deep": damaged(b"[" * 10_000 + b"]" * 10_000),
    "not a message": NOT_A_MESSAGE,
}


@pytest.mark.parametrize("path", ["/compact", ""], ids=["compact", "create"])
@pytest.mark.parametrize("content", BAD_COMPACTIONS.values(), ids=BAD_COMPACTIONS.keys())
async def test_a_compaction_not_written_here_is_a_400(
    http: httpx.AsyncClient, path: str, content: str
) -> None:
    item = {"type": "compaction", "encrypted_content": content}
    body = {"model": "fake", "input": [{"role": "user", "content": "hi"}, item]}
    response = await http.post(URL + path, json=body)
    assert_openai_error(response, 400, "input[1].encrypted_content", "invalid_value")


@pytest.mark.parametrize("path", ["/compact", ""], ids=["compact", "create"])
async def test_an_error_in_a_compactions_message_names_its_content(
    http: httpx.AsyncClient, path: str
) -> None:
    """An image the model cannot read in a message a compaction carries: the 400 names the
    compaction's `encrypted_content`; it named `input[1].content[0]`, which a compaction has
    not."""
    image = [{"type": "input_image", "image_url": data_uri(png())}]
    carried = encode(Compacted("s", [{"role": "user", "content": image}]))
    item = {"type": "compaction", "encrypted_content": carried}
    body = {"model": "fake", "input": [{"role": "user", "content": "hi"}, item]}
    response = await http.post(URL + path, json=body)
    assert_openai_error(response, 400, "input[1].encrypted_content", "image_input_unsupported")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "fake"}, 400, "input"),
        ({"model": "fake", "input": []}, 400, "input"),
        ({"model": "fake", "input": [{"type": "computer_call_output"}]}, 400, "input[0].type"),
        ({"model": "fake", "input": [{"role": "user", "content": 5}]}, 400, "input[0].content"),
        ({"model": "fake", "input": "hi", "instructions": 5}, 400, "instructions"),
        ({"model": "nope", "input": "hi"}, 404, "model"),
        ({"model": "fake", "input": "hi", "previous_response_id": "resp_nope"}, 404,
         "previous_response_id"),
    ],
)  # fmt: skip
async def test_bad_input_is_an_openai_error_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], status: int, param: str
) -> None:
    assert_openai_error(await http.post(f"{URL}/compact", json=body), status, param)
