"""Claude Code 2.1.332's requests around its tool search (captured from `claude -p` on its full
prompt against mlxd). When the model calls ToolSearch (`select:WebFetch`), Claude Code adds the
found tool to `tools` (`defer_loading: true`) and answers the call with a `tool_reference` block
(the advanced-tool-use beta); the turn must be served, with the reference read as the tool's
name. With tool search off (`ENABLE_TOOL_SEARCH=false`, or its fallback when a reference is
refused) it declares all 22 of its tools in full, 72 KiB of JSON, and every turn must still be
served."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import asgi_client

CAPTURE = json.loads((Path(__file__).parent / "claude_code_2_1_332_tool_search.json").read_text())
SEARCH_OFF = CAPTURE["tool_search_off_turn"]
REFERENCE = CAPTURE["tool_reference_turn"]


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(SEARCH_OFF["body"]["model"], reply="Hi.", context_length=200_000)


@pytest.fixture
async def http(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    # The default settings: their limits are what is under test.
    async with asgi_client(Settings(), [engine]) as client:
        yield client


async def post(http: httpx.AsyncClient, turn: dict[str, Any]) -> httpx.Response:
    return await http.post("/v1/messages?beta=true", json=turn["body"], headers=turn["headers"])


async def test_every_tool_declared_in_full_is_served(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    tools = SEARCH_OFF["body"]["tools"]
    assert len(tools) == 22 and len(json.dumps(tools)) > 64 * 1024  # what the test is about
    response = await post(http, SEARCH_OFF)
    assert response.status_code == 200, response.text
    assert len(engine.tools_seen or []) == 22
    counted = await http.post(
        "/v1/messages/count_tokens",
        json={key: SEARCH_OFF["body"][key] for key in ("model", "messages", "system", "tools")},
        headers=SEARCH_OFF["headers"],
    )
    assert counted.status_code == 200, counted.text


@pytest.mark.parametrize("route", ["/v1/messages?beta=true", "/v1/messages/count_tokens"])
async def test_a_tool_reference_in_a_tool_result_is_read_as_the_tool_found(
    http: httpx.AsyncClient, engine: FakeEngine, route: str
) -> None:
    body = REFERENCE["body"]
    result = body["messages"][-1]["content"][0]
    assert result["content"] == [{"type": "tool_reference", "tool_name": "WebFetch"}]
    if route.endswith("count_tokens"):
        body = {key: body[key] for key in ("model", "messages", "system", "tools")}
    response = await http.post(route, json=body, headers=REFERENCE["headers"])
    assert response.status_code == 200, response.text
    if route.endswith("count_tokens"):
        return
    prompt = "".join(chr(t) for t in engine.requests[-1].prompt_tokens)
    assert prompt.endswith("<assistant><tool>Tool loaded: WebFetch")
    assert "WebFetch" in [tool["function"]["name"] for tool in engine.tools_seen or []]


async def test_a_tool_reference_among_other_result_blocks_keeps_its_place(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [
            {"type": "text", "text": "Found:"},
            {"type": "tool_reference", "tool_name": "WebFetch"},
            {"type": "tool_reference", "tool_name": "WebSearch"},
        ],
    }
    body = {
        "model": engine.name,
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "Find the web tools."},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {}}],
            },
            {"role": "user", "content": [result]},
        ],
    }
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    prompt = "".join(chr(t) for t in engine.requests[-1].prompt_tokens)
    assert prompt.endswith("<tool>Found:\nTool loaded: WebFetch\nTool loaded: WebSearch")


async def test_a_tool_reference_without_a_tool_name_is_named(http: httpx.AsyncClient) -> None:
    result = {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "tool_reference"}]}
    body = {
        "model": "any",
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
            },
            {"role": "user", "content": [result]},
        ],
    }
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert (
        message == "Invalid value for 'messages[2].content[0].content[0].tool_name': Field required"
    )
