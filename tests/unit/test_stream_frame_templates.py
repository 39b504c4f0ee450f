"""Anthropic Messages and Responses streams write their delta events from `sse.Template`s
(per block or item): every frame must still be the bytes the whole-payload encoding
(`sse.event`, itself sse-starlette's bytes: test_sse_frames.py) gives for the event it carries,
and Responses' sequence numbers must still count from 0 without a gap. Checked on the frame
writers fed the block/item events directly (against each event's own whole frame), and through
the app (each frame against its parsed payload's)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from server import sse
from server.message_blocks import MessageBlocks
from server.responses_output import OutputItems
from server.routes.messages import _BlockFrames
from server.routes.responses import _DELTA_EVENTS, _Frames
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import asgi_client

TEXTS = ["", "Hello", ' "quoted" \\ \n\r\t', "naïve 日本語 🙂 \u2028", "\x00slot\x00 inside"]
WEATHER_INPUT = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
REPLIES = [
    pytest.param(
        FakeEngine(reply='Hi "there"\n\tnaïve 🙂 \\ done.', context_length=4096), id="text"
    ),
    pytest.param(
        FakeEngine(reply="Let me think.</think>Paris.", context_length=4096, reasoning=True),
        id="reasoning",
    ),
    pytest.param(FakeEngine(reply=CALL, context_length=4096), id="tool-call"),
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("number", [0, 7, 12345])
def test_a_numbered_named_template_writes_the_whole_frame(text: str, number: int) -> None:
    def payload(delta: Any, sequence: Any) -> dict[str, Any]:
        return {"type": "response.output_text.delta", "delta": delta, "sequence_number": sequence}

    template = sse.Template(payload(sse.SLOT, sse.NUMBER), "response.output_text.delta")
    assert template(text, number) == sse.event("response.output_text.delta", payload(text, number))


@pytest.mark.parametrize("text", TEXTS)
def test_a_named_template_without_a_number_writes_the_whole_frame(text: str) -> None:
    def payload(delta: str) -> dict[str, Any]:
        text_delta = {"type": "text_delta", "text": delta}
        return {"type": "content_block_delta", "index": 3, "delta": text_delta}

    template = sse.Template(payload(sse.SLOT), "content_block_delta")
    assert template(text) == sse.event("content_block_delta", payload(text))


@pytest.mark.parametrize(
    "payload",
    [
        {"n": sse.NUMBER, "text": sse.SLOT},  # before the text
        {"text": sse.SLOT, "a": sse.NUMBER, "b": sse.NUMBER},  # twice
    ],
)
def test_a_number_is_held_once_after_the_text(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="NUMBER once, after SLOT"):
        sse.Template(payload)


@pytest.fixture
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    engine: FakeEngine = request.param
    async with asgi_client(Settings(max_body_bytes=1 << 20), [engine]) as client:
        yield client


def frames(body: bytes) -> list[tuple[bytes, str, dict[str, Any]]]:
    """(frame bytes with its blank line, event name, payload) of every named event."""
    found = []
    for raw in body.split(b"\r\n\r\n"):
        if not raw or raw.startswith(b":"):
            continue
        name_line, data_line = raw.split(b"\r\n")
        name = name_line.removeprefix(b"event: ").decode()
        found.append((raw + b"\r\n\r\n", name, json.loads(data_line.removeprefix(b"data: "))))
    return found


def assert_whole_frames(body: bytes, delta_kind: str) -> list[dict[str, Any]]:
    """Every frame is `sse.event` of its own payload; there are several `delta_kind` events."""
    found = frames(body)
    for frame, name, payload in found:
        assert frame == sse.event(name, payload)
    assert sum(name == delta_kind for _, name, _ in found) > 1
    return [payload for _, _, payload in found]


@pytest.mark.parametrize("http", REPLIES, indirect=True)
async def test_messages_stream_frames_are_whole_frames(http: httpx.AsyncClient) -> None:
    body = {
        "model": "fake",
        "max_tokens": 200,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "get_weather", "input_schema": WEATHER_INPUT}],
    }
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    payloads = assert_whole_frames(response.content, "content_block_delta")
    assert payloads[-1] == {"type": "message_stop"}


@pytest.mark.parametrize("http", REPLIES, indirect=True)
async def test_responses_stream_frames_are_whole_frames(http: httpx.AsyncClient) -> None:
    body = {
        "model": "fake",
        "stream": True,
        "input": "hi",
        "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER_INPUT}],
    }
    response = await http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    found = frames(response.content)
    delta_kind = next(name for _, name, _ in found if name.endswith(".delta"))
    payloads = assert_whole_frames(response.content, delta_kind)
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert payloads[-1]["type"] == "response.completed"


# Chat deltas as a ChoiceOutput yields them: reasoning, text, then a call in pieces.
DELTAS: list[dict[str, Any]] = [
    {"reasoning_content": "Let me "},
    {"reasoning_content": 'think "hard".'},
    {"content": "Hi"},
    {"content": ' "there"\n\tnaïve 🙂 \\'},
    {"content": "\x00slot\x00"},
    {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
]  # fmt: skip


def test_message_block_frames_are_the_events_whole_frames() -> None:
    """Each frame is what `sse.event` writes for the event itself (as before the Templates)."""
    blocks, frame = MessageBlocks(), _BlockFrames()
    events = blocks.feed(DELTAS) + blocks.feed(DELTAS[2:]) + blocks.finish()
    assert {e["delta"]["type"] for e in events if e["type"] == "content_block_delta"} >= {
        "thinking_delta", "signature_delta", "text_delta", "input_json_delta"
    }  # fmt: skip
    for event in events:
        assert frame(event) == sse.event(event["type"], event)


def test_responses_frames_are_the_events_whole_frames_numbered_from_0() -> None:
    """Also with the reasoning streamed as a summary (`reasoning.summary` asked for)."""
    events, frame = [], _Frames()
    for items in (OutputItems(), OutputItems(summary=True)):
        events += [event for delta in DELTAS + DELTAS[2:] for event in items.feed(delta)]
        events += items.finish("completed")
    assert {e["type"] for e in events} >= _DELTA_EVENTS
    for number, event in enumerate(events):
        assert frame(event) == sse.event(event["type"], {**event, "sequence_number": number})
