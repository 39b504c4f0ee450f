"""`POST /v1/responses/compact` on a scripted engine, through the strict OpenAI SDK and raw HTTP:
the summary is the model's answer to the compaction prompt after the conversation, the
`compaction` item it comes back in stands for the user messages and that summary when sent in a
later request's `input` (also stored, and compacted again), and bad input is a 400."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from server.compaction_content import PREFIX, SUMMARY_HEADING, Compacted, decode, encode
from server.responses_compaction import (
    COMPACTION_PROMPT,
    CUT_NOTE,
    SUMMARY_MAX_TOKENS,
    carried_budget,
    carried_messages,
)
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
    "dropped not a count": damaged(b'{"summary": "s", "messages": [], "dropped": true}'),
}


def test_a_compaction_written_before_the_dropped_count_reads_as_none_dropped() -> None:
    """Items from before `dropped` was written (they carried every user message) still read."""
    written = damaged(json.dumps({"summary": "s", "messages": [{"role": "user"}]}).encode())
    assert decode(written) == Compacted("s", [{"role": "user"}], 0)
    assert decode(encode(Compacted("s", [], 3))) == Compacted("s", [], 3)


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


# -- the user messages a compaction carries are bounded ---------------------------------------


def json_bytes(message: dict[str, Any]) -> int:
    return len(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode())


def long_session(turns: int, size: int) -> list[dict[str, Any]]:
    """`turns` turns, each user message `size` characters long and numbered."""
    conversation: list[dict[str, Any]] = []
    for turn in range(turns):
        text = f"question {turn} " + "x" * size
        conversation += [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
    return conversation


# One token a character: a context where the budget's bytes (4 a token) fit whole.
ROOMY = FakeEngine(context_length=200_000, reply=SUMMARY)


@pytest.mark.parametrize("fake_engine", [ROOMY], ids=["200k"])
async def test_a_long_sessions_compaction_carries_its_newest_user_messages_within_a_budget(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    """The user messages carried are the newest whole ones that fit `carried_budget` (the
    bytes of their JSON, tied to the model's context); the oldest are dropped and the summary
    heading says how many. They were all carried: a long session's compaction grew until its
    request passed the body limit (a 413). Compacting again stays within the budget, and the
    count of those left out adds up."""
    budget = carried_budget(200_000)
    conversation = long_session(turns=100, size=1000)
    [item] = await compacted_items(client, input=conversation)
    compaction = decode(item["encrypted_content"])
    carried = [m["content"] for m in compaction.messages]
    size = sum(json_bytes(m) for m in compaction.messages)
    user_texts = [m["content"] for m in conversation if m["role"] == "user"]
    kept = len(carried)
    assert 0 < kept < 100 and carried == user_texts[-kept:]  # the newest, whole, in order
    assert size <= budget < size + json_bytes(conversation[-2 * kept - 2])  # no room for more
    assert compaction.dropped == 100 - kept
    # Round trip: the item in `input` stands for those messages, then the summary saying so.
    await client.responses.create(
        model="fake",
        input=[item, {"role": "user", "content": "go on"}],  # type: ignore[list-item]
    )
    prompt = prompt_of(fake_engine)
    assert prompt.startswith("".join(f"<user>{text}" for text in carried))
    assert f"left out above to keep it short: the earliest {100 - kept} user messages" in prompt
    assert prompt.endswith(f"{SUMMARY}<user>go on")
    # Again, with more turns: still within the budget, the dropped counted on.
    more = long_session(turns=110, size=1000)[200:]
    [again] = await compacted_items(client, input=[item, *more])
    second = decode(again["encrypted_content"])
    assert sum(json_bytes(m) for m in second.messages) <= budget
    assert second.messages[-1]["content"] == more[-2]["content"]
    assert second.dropped == 110 - len(second.messages)


@pytest.mark.parametrize("fake_engine", [ROOMY], ids=["200k"])
async def test_a_newest_user_message_over_the_budget_is_carried_cut(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    """A last message longer than the whole budget (a paste) keeps its start and end, the
    middle replaced by a note of how much was cut; older messages are dropped. In parts, the
    text parts are cut alike."""
    budget = carried_budget(200_000)
    head, tail = "START " + "a" * 100, "b" * 100 + " END"
    paste = head + "m" * (budget + 10_000) + tail
    conversation = [
        {"role": "user", "content": "older"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": paste},
    ]
    [item] = await compacted_items(client, input=conversation)
    [message] = decode(item["encrypted_content"]).messages
    assert budget - 100 <= json_bytes(message) <= budget
    text = message["content"]
    assert text.startswith(head) and text.endswith(tail)
    note = re.search(re.escape(CUT_NOTE).replace(re.escape("{}"), r"(\d+)"), text)
    assert note is not None and len(text) - len(note[0]) + int(note[1]) == len(paste)
    assert decode(item["encrypted_content"]).dropped == 1
    conversation[-1]["content"] = [
        {"type": "input_text", "text": "see:"},
        {"type": "input_text", "text": paste},
    ]
    [item] = await compacted_items(client, input=conversation)
    [message] = decode(item["encrypted_content"]).messages
    assert json_bytes(message) <= budget
    first, second = message["content"]
    assert first["text"] == "see:" and second["text"].startswith(head)
    assert second["text"].endswith(tail)


def test_a_cut_message_leaves_out_what_does_not_fit() -> None:
    """Cutting the newest message to the budget: its text parts are cut in the middle, an
    image that does not fit in what is left is left out (a compaction carries no megabytes of
    base64), one that fits is kept."""
    small = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    big = {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 5000}
    text = {"type": "input_text", "text": "t" * 5000}
    message = {"role": "user", "content": [small, text, big]}
    [cut], dropped = carried_messages([{"role": "user", "content": "old"}, message], 2000)
    assert dropped == 1 and json_bytes(cut) <= 2000
    kept_small, kept_text = cut["content"]
    assert kept_small == small and kept_text["type"] == "input_text"
    assert "characters cut" in kept_text["text"]


@pytest.mark.parametrize("fake_engine", [FakeEngine(context_length=200_000)], ids=["200k"])
async def test_more_messages_than_a_request_may_hold_are_compacted_from_the_latest_turns(
    client: AsyncOpenAI, fake_engine: FakeEngine, settings: Settings
) -> None:
    """A conversation of more messages than `max_messages` (4,096) is summarized from its
    latest turns that make a request of at most that many (with the prompt), as one too long
    for the context is; it was a 400 ("At most 4096 messages are allowed"), so a session past
    that count could not be compacted at all."""
    turns = settings.max_messages // 2 + 10
    conversation: list[dict[str, Any]] = []
    for turn in range(turns):
        conversation += [
            {"role": "user", "content": f"q{turn}"},
            {"role": "assistant", "content": f"a{turn}"},
        ]
    [item] = await compacted_items(client, input=conversation)
    assert item["type"] == "compaction"
    prompt = prompt_of(fake_engine)
    read = (settings.max_messages - 1) // 2  # whole turns, with the prompt's message
    first = turns - read
    assert prompt.startswith(f"<user>q{first}<assistant>a{first}<user>q{first + 1}")
    assert prompt.endswith(f"<assistant>a{turns - 1}<user>{COMPACTION_PROMPT}")
    assert decode(item["encrypted_content"]).messages[-1]["content"] == f"q{turns - 1}"


@pytest.mark.parametrize("settings", [Settings(max_messages=4)], ids=["4"])
async def test_a_last_turn_of_more_messages_than_a_request_may_hold_is_a_400(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """Turns are dropped whole: where the last one alone (with the prompt) is more messages
    than `max_messages`, nothing can be summarized."""
    last_turn = CONVERSATION[2:]  # a user message, a call, its output, the answer: 4 messages
    body = {"model": "fake", "input": [{"role": "user", "content": "hi"}, *last_turn]}
    response = await http.post(f"{URL}/compact", json=body)
    assert_openai_error(response, 400, "input", "context_length_exceeded")
    assert "5 messages; at most 4 are allowed" in response.json()["error"]["message"]
    assert fake_engine.requests == []
