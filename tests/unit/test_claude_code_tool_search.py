"""Claude Code 2.1.332's requests around its tool search (captured from `claude -p` on its full
prompt against mlxd). When the model calls ToolSearch (`select:WebFetch`), Claude Code adds the
found tool to `tools` (`defer_loading: true`) and answers the call with a `tool_reference` block
(the advanced-tool-use beta); the turn must be served, with the reference read as the tool's
definition and the deferred tools out of the prompt's tools block, yet forced, called and
validated as any other, and counted as rendered. With tool search off (`ENABLE_TOOL_SEARCH=false`,
or its fallback when a reference is refused) it declares all 22 of its tools in full, 72 KiB of
JSON, and every turn must still be served."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.schemas.deferred_tools import definition
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import asgi_client

CAPTURE = json.loads((Path(__file__).parent / "claude_code_2_1_332_tool_search.json").read_text())
SEARCH_OFF = CAPTURE["tool_search_off_turn"]
REFERENCE = CAPTURE["tool_reference_turn"]
MODEL = REFERENCE["body"]["model"]
TOOLS = {tool["name"]: tool for tool in REFERENCE["body"]["tools"]}
WEBFETCH = {"type": "function", "function": {"name": "WebFetch"}}
WEBFETCH["function"].update(
    {
        "description": TOOLS["WebFetch"]["description"],
        "parameters": TOOLS["WebFetch"]["input_schema"],
    }
)


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
    assert prompt.endswith(f"<assistant><tool>Tool loaded: WebFetch\n{definition(WEBFETCH)}")
    listed = [tool["function"]["name"] for tool in engine.tools_seen or []]
    assert "ToolSearch" in listed
    assert "WebFetch" not in listed and "DeferredToolPlaceholder" not in listed


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


def first_turn(**changes: Any) -> dict[str, Any]:
    """The tool-reference turn's first exchange (before ToolSearch was called), with WebFetch
    offered deferred and never loaded, and `changes`."""
    body = REFERENCE["body"]
    return {**body, "messages": body["messages"][:2], "stream": False, **changes}


def names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [tool["function"]["name"] for tool in tools or []]


async def test_a_forced_call_of_a_deferred_tool_is_held_to_its_schema(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    engine.reply = (
        '<tool_call>{"name": "WebFetch", "arguments": {"url": "https://a.b", "prompt": "x"}}'
    )
    body = first_turn(tool_choice={"type": "tool", "name": "WebFetch"}, thinking=None)
    response = await http.post("/v1/messages", json=body, headers=REFERENCE["headers"])
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["name"] == "WebFetch"
    assert "WebFetch" in names(engine.tools_seen)  # made to call it, the model is shown it
    assert engine.requests[-1].grammar is not None and "WebFetch" in engine.grammars_checked[-1]
    loaded = {"type": "tool_reference", "tool_name": "WebFetch"}  # once loaded: defined there
    search = {"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {"query": "fetch"}}
    found = {"type": "tool_result", "tool_use_id": "t1", "content": [loaded]}
    later = [
        *body["messages"],
        {"role": "assistant", "content": [search]},
        {"role": "user", "content": [found]},
    ]
    response = await http.post(
        "/v1/messages", json={**body, "messages": later}, headers=REFERENCE["headers"]
    )
    assert response.status_code == 200, response.text
    assert "WebFetch" not in names(engine.tools_seen)


@pytest.mark.parametrize(
    ("arguments", "called"),
    [({"url": "https://a.b", "prompt": "x"}, True), ({"address": "https://a.b"}, False)],
)
async def test_an_untagged_call_of_a_deferred_tool_is_validated_against_its_schema(
    http: httpx.AsyncClient, engine: FakeEngine, arguments: dict[str, Any], called: bool
) -> None:
    """A call written without tags counts only where its arguments fit the tool's schema: the
    deferred tool's schema is known though the prompt's tools block leaves it out."""
    engine.reply = json.dumps({"name": "WebFetch", "arguments": arguments})
    response = await http.post("/v1/messages", json=first_turn(), headers=REFERENCE["headers"])
    assert response.status_code == 200, response.text
    assert "WebFetch" not in names(engine.tools_seen)
    kinds = [block["type"] for block in response.json()["content"]]
    assert kinds == (["tool_use"] if called else ["text"])
    if called:
        assert response.json()["content"][0]["input"] == arguments


async def test_count_tokens_counts_what_messages_renders(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    """The reference as the loaded definition, the tools block without the deferred tools."""
    body = {**REFERENCE["body"], "stream": False}
    served = await http.post("/v1/messages", json=body, headers=REFERENCE["headers"])
    assert served.status_code == 200, served.text
    rendered, listed = engine.requests[-1].prompt_tokens, names(engine.tools_seen)
    counted = await http.post(
        "/v1/messages/count_tokens",
        json={key: body[key] for key in ("model", "messages", "system", "tools")},
        headers=REFERENCE["headers"],
    )
    assert counted.status_code == 200, counted.text
    assert counted.json()["input_tokens"] == len(rendered)
    assert names(engine.tools_seen) == listed and "WebFetch" not in listed


def searched_twice(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """A conversation that loads the tool `Get` by a tool search twice."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Get it."}]
    for n in (1, 2):
        search = {"type": "tool_use", "id": f"s{n}", "name": "Search", "input": {}}
        found = {"type": "tool_reference", "tool_name": "Get"}
        result = {"type": "tool_result", "tool_use_id": f"s{n}", "content": [found]}
        messages += [
            {"role": "assistant", "content": [search]},
            {"role": "user", "content": [result]},
        ]
    return {"model": MODEL, "max_tokens": 5, "tools": tools, "messages": messages}


SEARCH = {"name": "Search", "input_schema": {"type": "object", "properties": {}}}
GET = {"name": "Get", "description": "Gets.", "input_schema": {"type": "object"}}


async def test_a_tool_loaded_twice_is_defined_at_its_first_load(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    body = searched_twice([SEARCH, {**GET, "defer_loading": True}])
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    prompt = "".join(chr(t) for t in engine.requests[-1].prompt_tokens)
    get = {"type": "function", "function": {"name": "Get", "description": "Gets."}}
    get["function"]["parameters"] = {"type": "object"}
    first, second = prompt.split("<tool>")[1:]
    assert first == f"Tool loaded: Get\n{definition(get)}<assistant>"
    assert second == "Tool loaded: Get"
    assert names(engine.tools_seen) == ["Search"]


async def test_with_every_tool_deferred_the_tools_block_lists_them_all(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    """The model would be shown no tool, and most templates would not say how to call one."""
    deferred = [{**SEARCH, "defer_loading": True}, {**GET, "defer_loading": True}]
    response = await http.post("/v1/messages", json=searched_twice(deferred))
    assert response.status_code == 200, response.text
    assert names(engine.tools_seen) == ["Search", "Get"]
    prompt = "".join(chr(t) for t in engine.requests[-1].prompt_tokens)
    assert prompt.split("<tool>")[1:] == ["Tool loaded: Get<assistant>", "Tool loaded: Get"]
