"""opencode's captured requests (tests/unit/opencode_*_first_request.json: its title request, its
first turn with its own agent prompt and ten tools, and the follow-up after a `read` call) replayed
on a scripted engine, on both wires opencode speaks: `@ai-sdk/openai-compatible` → chat
completions, `@ai-sdk/openai` → Responses. Each must be accepted whole and answered in the shape
opencode assembles (it hangs without the closing event or `[DONE]`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine

HERE = Path(__file__).parent
CHAT = json.loads((HERE / "opencode_chat_first_request.json").read_text())
RESPONSES = json.loads((HERE / "opencode_responses_first_request.json").read_text())
TOOLS = ["bash", "edit", "glob", "grep", "read", "skill", "task", "todowrite", "webfetch", "write"]
NOTES = "/tmp/agents/oc/work/notes.txt"  # the file the captured run read
READ = f'<tool_call>\n{{"name": "read", "arguments": {{"filePath": "{NOTES}"}}}}\n</tool_call>'
ANSWER = "The secret word is pineapple."


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(context_length=65536)  # opencode's prompt is ~9.6k characters here


@pytest.fixture
async def http(engine: FakeEngine, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    pool = EnginePool([engine])
    app = create_app(Settings(home=tmp_path, max_body_bytes=1 << 20), pool)
    await pool.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client
    await pool.drain(timeout=1)


def prompt_of(engine: FakeEngine) -> str:
    return engine.decode(engine.requests[-1].prompt_tokens)


async def post_stream(
    http: httpx.AsyncClient, request: dict[str, Any], body: dict[str, Any]
) -> list[str]:
    """The `data:` payloads of a streamed answer to `request` (its path and headers) with
    `body`."""
    async with http.stream(
        request["method"], request["path"], json=body, headers=request["headers"]
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]


def with_fake_model(request: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**request["body"], "model": "fake", **fields}


# -- chat completions (@ai-sdk/openai-compatible, what `mlxd launch opencode` writes) ----------


def chat_chunks(payloads: list[str]) -> list[dict[str, Any]]:
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


async def test_chat_title_request(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    title = CHAT["title"]
    assert "tools" not in title["body"] and title["body"]["stream"] is True
    chunks = chat_chunks(await post_stream(http, title, with_fake_model(title)))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello there!"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    assert prompt_of(engine).startswith("<system>You are a title generator.")
    assert engine.requests[-1].max_tokens == 8192


async def test_chat_turn_streams_a_tool_call_opencode_can_run(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    turn = CHAT["turn"]
    assert turn["body"]["tool_choice"] == "auto"
    engine.reply = READ
    chunks = chat_chunks(await post_stream(http, turn, with_fake_model(turn)))
    assert engine.tools_seen is not None
    assert [tool["function"]["name"] for tool in engine.tools_seen] == TOOLS
    calls = [
        call
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "read"
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments) == {"filePath": NOTES}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1]["usage"] is not None  # stream_options.include_usage


async def test_chat_follow_up_with_the_tool_result(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    turn = CHAT["turn"]
    appended = CHAT["follow_up_messages"]
    body = with_fake_model(turn, messages=turn["body"]["messages"] + appended)
    engine.reply = ANSWER
    chunks = chat_chunks(await post_stream(http, turn, body))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == ANSWER
    assert prompt_of(engine).endswith("<assistant><tool>" + appended[1]["content"])


# -- Responses (@ai-sdk/openai) ---------------------------------------------------------------


def response_events(payloads: list[str]) -> list[dict[str, Any]]:
    events = [json.loads(payload) for payload in payloads]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


def assert_items_open_before_their_deltas(events: list[dict[str, Any]]) -> None:
    """opencode needs `output_item.added` (and `content_part.added` for text) before deltas."""
    added: set[int] = set()
    parts: set[int] = set()
    for event in events:
        index = event.get("output_index", -1)
        if event["type"] == "response.output_item.added":
            added.add(index)
        elif event["type"] == "response.content_part.added":
            assert index in added
            parts.add(index)
        elif event["type"] == "response.output_text.delta":
            assert index in parts
        elif event["type"] == "response.function_call_arguments.delta":
            assert index in added


async def test_responses_title_request(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    title = RESPONSES["title"]
    body = title["body"]
    assert body["store"] is False and body["input"][0]["role"] == "system"
    events = response_events(await post_stream(http, title, with_fake_model(title)))
    assert_items_open_before_their_deltas(events)
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello there!"
    assert final["max_output_tokens"] == body["max_output_tokens"]
    assert prompt_of(engine).startswith("<system>You are a title generator.")


async def test_responses_turn_streams_a_function_call(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    turn = RESPONSES["turn"]
    assert {"prompt_cache_key", "store"} <= set(turn["body"])
    engine.reply = READ
    events = response_events(await post_stream(http, turn, with_fake_model(turn)))
    assert_items_open_before_their_deltas(events)
    assert engine.tools_seen is not None
    assert [tool["function"]["name"] for tool in engine.tools_seen] == TOOLS
    [done] = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done["type"] == "function_call" and done["name"] == "read"
    assert json.loads(done["arguments"]) == {"filePath": NOTES}


async def test_responses_follow_up_with_the_function_output(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    turn = RESPONSES["turn"]
    appended = RESPONSES["follow_up_input"]
    assert [item["type"] for item in appended] == ["function_call", "function_call_output"]
    body = with_fake_model(turn, input=turn["body"]["input"] + appended)
    engine.reply = ANSWER
    events = response_events(await post_stream(http, turn, body))
    assert_items_open_before_their_deltas(events)
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == ANSWER
    assert prompt_of(engine).endswith("<assistant><tool>" + appended[1]["output"])


@pytest.mark.parametrize(
    ("capture", "mangle", "param"),
    [
        (CHAT, lambda b: b["tools"][4]["function"].pop("name"), "tools[4].function.name"),
        (CHAT, lambda b: b["messages"][1].update(role="wizard"), "messages[1].role"),
        (RESPONSES, lambda b: b["tools"][4].update(type="teleport"), "tools[4].type"),
        (RESPONSES, lambda b: b["input"][1]["content"][0].pop("text"), "input[1].content[0].text"),
    ],
)  # fmt: skip
async def test_a_broken_part_of_the_captured_body_is_a_400_naming_it(
    http: httpx.AsyncClient, capture: dict[str, Any], mangle: Any, param: str
) -> None:
    turn = capture["turn"]
    body = json.loads(json.dumps(with_fake_model(turn)))
    mangle(body)
    response = await http.post(turn["path"], json=body, headers=turn["headers"])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
