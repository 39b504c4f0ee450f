"""Hostile request bodies found by fuzzing a live server (schemathesis and hand-written probes):
each is a clear 4xx in the route's own error shape, never a 500, a traceback or a dropped
connection. Scripted fake engines; the real engine's chat templates, which some of these values
used to reach and crash, are behind the checks tested here."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import Message

from engines.errors import InvalidRequest
from engines.pool import EnginePool
from server.app import create_app
from server.body import MAX_JSON_DEPTH
from server.settings import Settings
from tests.fake_embed import FakeEmbedEngine
from tests.fakes import FakeEngine
from tests.helpers import HELLO, asgi_client, assert_openai_error, chat_body

DEEP = "[" * 100_000 + "]" * 100_000  # past what Python's json parser can recurse into


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(max_body_bytes=1024 * 1024)
    async with asgi_client(
        settings, [FakeEngine(context_length=4096), FakeEmbedEngine()]
    ) as client:
        yield client


def nested(depth: int) -> Any:
    """A JSON value `depth` levels deep (arrays)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def assert_anthropic_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions"]
)
async def test_a_body_too_deep_to_parse_is_400(http: httpx.AsyncClient, path: str) -> None:
    content = '{"model": "fake", "metadata": ' + DEEP + "}"
    response = await http.post(path, content=content)
    error = assert_openai_error(response, 400, code="json_too_deep")
    assert f"more than {MAX_JSON_DEPTH} levels" in error["message"]


async def test_a_body_too_deep_to_parse_is_an_anthropic_400_on_messages(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/v1/messages", content='{"model": "fake", "x": ' + DEEP + "}")
    assert "levels deep" in assert_anthropic_error(response, 400)


async def test_nesting_is_refused_past_the_limit_and_served_up_to_it(
    http: httpx.AsyncClient,
) -> None:
    """A value inside a tool's parameters sits 5 levels down the body, so one `MAX_JSON_DEPTH - 5`
    levels deep makes the body exactly `MAX_JSON_DEPTH` deep. A few hundred levels more still
    parse, but then `json.dumps` of the tools in a chat template hit the recursion limit."""

    def body(depth: int) -> dict[str, Any]:
        function = {"name": "f", "parameters": {"type": "object", "x": nested(depth)}}
        return chat_body(tools=[{"type": "function", "function": function}])

    fits = await http.post("/v1/chat/completions", json=body(MAX_JSON_DEPTH - 5))
    assert fits.status_code == 200, fits.text
    deeper = await http.post("/v1/chat/completions", json=body(MAX_JSON_DEPTH - 4))
    assert_openai_error(deeper, 400, code="json_too_deep")


@pytest.mark.parametrize("function", [[], "f", 5, None])
async def test_an_assistant_tool_call_whose_function_is_no_object_is_400(
    http: httpx.AsyncClient, function: Any
) -> None:
    call = {"id": "call_1", "type": "function", "function": function}
    messages = [{"role": "assistant", "tool_calls": [call]}, *HELLO]
    response = await http.post("/v1/chat/completions", json=chat_body(messages=messages))
    error = assert_openai_error(response, 400, param="messages[0].tool_calls")
    assert "tool_calls[0].function must be an object" in error["message"]


async def test_tool_call_arguments_nested_too_deep_are_400(http: httpx.AsyncClient) -> None:
    """Templates parse a call's arguments: a JSON text too deep to parse (or to dump again
    after parsing) is refused like a body that deep, naming the field."""
    for arguments in (DEEP, json.dumps({"a": nested(MAX_JSON_DEPTH + 1)})):
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
        messages = [{"role": "assistant", "tool_calls": [call]}, *HELLO]
        response = await http.post("/v1/chat/completions", json=chat_body(messages=messages))
        assert_openai_error(response, 400, param="messages[0].tool_calls")
        items = [
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": arguments},
            {"type": "function_call_output", "call_id": "c", "output": "ok"},
        ]
        response = await http.post("/v1/responses", json={"model": "fake", "input": items})
        assert_openai_error(response, 400, param="input[0].arguments")
    # Arguments that are no JSON at all still pass through as text (templates keep them).
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[" * 200}}
    messages = [{"role": "assistant", "tool_calls": [call]}, *HELLO]
    response = await http.post("/v1/chat/completions", json=chat_body(messages=messages))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "arguments", ['{"city": "\\ud800"}', '{"\\udc00": 1}', '["a", ["\\uDBFF"]]']
)
async def test_tool_call_arguments_holding_a_lone_surrogate_escape_are_400(
    http: httpx.AsyncClient, arguments: str
) -> None:
    """The body's own strings may not hold a lone UTF-16 surrogate (server/body.py), but a call's
    JSON `arguments` text may escape one (`"\\ud800"`): the templates parse it into the prompt,
    which no tokenizer encodes (a 500, TypeError in `tokenizers`, on Qwen2.5 and SmolLM2)."""
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [{"role": "assistant", "tool_calls": [call]}, *HELLO]
    response = await http.post("/v1/chat/completions", json=chat_body(messages=messages))
    error = assert_openai_error(response, 400, param="messages[0].tool_calls")
    assert "lone UTF-16 surrogate" in error["message"]
    items = [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": arguments},
        {"type": "function_call_output", "call_id": "c", "output": "ok"},
    ]
    response = await http.post("/v1/responses", json={"model": "fake", "input": items})
    error = assert_openai_error(response, 400, param="input[0].arguments")
    assert "lone UTF-16 surrogate" in error["message"]
    # A whole pair escaped is a character; text that is no JSON stays text.
    for fine in ('{"emoji": "\\ud83d\\ude00"}', "not json \\ud800"):
        call["function"]["arguments"] = fine
        response = await http.post("/v1/chat/completions", json=chat_body(messages=messages))
        assert response.status_code == 200, response.text


PART_TYPE = "input[0].content[0].type"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"role": "user", "content": [{"type": ["input_text"]}]}]}, PART_TYPE),
        ({"input": [{"role": "user", "content": [{"type": {"a": 1}}]}]}, PART_TYPE),
        ({"tools": [{"type": ["function"], "name": "f"}]}, "tools[0].type"),
        ({"tools": [{"type": {"a": 1}, "name": "f"}]}, "tools[0].type"),
        (
            {"tools": [{"type": "namespace", "name": "n", "description": "d",
                        "tools": [{"type": ["custom"], "name": "f"}]}]},
            "tools[0].tools[0].type",
        ),
    ],
)  # fmt: skip
async def test_responses_types_that_are_lists_or_objects_are_400(
    http: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    response = await http.post("/v1/responses", json={"model": "fake", "input": "hi", **body})
    assert_openai_error(response, 400, param=param)


@pytest.mark.parametrize("key", ["\u00b2", "\u0663", "1\u00b9"])  # '²', Arabic-Indic 3, '1¹'
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_logit_bias_keys_must_be_ascii_digits(
    http: httpx.AsyncClient, key: str, path: str
) -> None:
    prompt = {"messages": HELLO} if "chat" in path else {"prompt": "hi"}
    body = {"model": "fake", "logit_bias": {key: 1}, **prompt}
    response = await http.post(path, json=body)
    assert_openai_error(response, 400, param="logit_bias")


async def test_a_client_gone_before_its_body_arrived_is_a_499_not_a_server_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starlette raises ClientDisconnect from the body stream; it used to reach the catch-all
    handler (an ERROR with its traceback, a 500 in the metrics) and be re-raised to uvicorn."""
    pool = EnginePool([FakeEngine()])
    app = create_app(Settings(), pool)
    await pool.start()
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                    (b"content-length", b"100")],
    }  # fmt: skip
    with caplog.at_level(logging.ERROR):
        await app(scope, receive, send)
    await pool.drain(timeout=1)
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_rerank_query_too_long_names_no_embeddings_only_field(
    http: httpx.AsyncClient,
) -> None:
    body = {"model": "fake-embed", "query": "a " * 40, "documents": ["a"]}
    response = await http.post("/v1/rerank", json=body)
    error = assert_openai_error(response, 400, param="query", code="context_length_exceeded")
    assert "truncate" not in error["message"]


class SlowTokenizerEngine(FakeEngine):
    """A chat engine whose tokenizer takes as long as the test wants (a prompt near the body
    limit takes seconds to render and tokenize): `entered` is set when it starts, and it
    records whether the test released it (`released`) or it gave up waiting."""

    def __init__(self) -> None:
        super().__init__(context_length=4096)
        self.entered, self.release = threading.Event(), threading.Event()
        self.released: list[bool] = []

    def _slow(self) -> None:
        self.entered.set()
        self.released.append(self.release.wait(timeout=2))

    def encode_chat(self, *args: Any, **kwargs: Any) -> list[int]:
        self._slow()
        return super().encode_chat(*args, **kwargs)

    def encode_text(self, text: str) -> list[int]:
        self._slow()
        return super().encode_text(text)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body()),
        ("/v1/completions", {"model": "fake", "prompt": "hi", "max_tokens": 1}),
        ("/v1/responses", {"model": "fake", "input": "hi"}),
        ("/v1/messages/count_tokens", {"model": "fake", "messages": HELLO}),
    ],
)
async def test_tokenizing_a_prompt_does_not_stall_other_requests(
    path: str, body: dict[str, Any]
) -> None:
    """While one request's prompt is tokenized, /health (and every stream) is still served:
    tokenizing runs in a worker thread. On the event loop it held everything up: a 15 MB
    prompt stalled /health for 7 s on a 2-core machine."""
    engine = SlowTokenizerEngine()
    pool = EnginePool([engine])
    await pool.start()
    transport = httpx.ASGITransport(app=create_app(Settings(), pool))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        slow = asyncio.create_task(client.post(path, json=body))
        assert await asyncio.to_thread(engine.entered.wait, 2)
        health = await client.get("/health")
        engine.release.set()
        response = await slow
    await pool.drain(timeout=1)
    assert health.status_code == 200
    assert response.status_code == 200, response.text
    assert engine.released == [True]  # it waited for the test, not for its own timeout


UNENFORCEABLE = {"type": "object", "x-unsupported": True}  # the fake's grammar check refuses it


@pytest.mark.parametrize(
    ("body", "wording"),
    [
        ({"stop_sequences": [""]}, "Invalid value for 'stop_sequences': "),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": UNENFORCEABLE}}},
            "output_config.format.schema cannot be enforced: ",
        ),
    ],
)
async def test_messages_errors_name_the_anthropic_fields(
    http: httpx.AsyncClient, body: dict[str, Any], wording: str
) -> None:
    """A Messages request runs as a chat request; its errors used to name the chat fields
    (`stop`, `response_format.json_schema.schema`), which the client never sent."""
    request = {"model": "fake", "max_tokens": 5, "messages": HELLO, **body}
    message = assert_anthropic_error(await http.post("/v1/messages", json=request), 400)
    assert message.startswith(wording), message


async def test_responses_errors_name_the_responses_fields(http: httpx.AsyncClient) -> None:
    text = {"format": {"type": "json_schema", "name": "out", "schema": UNENFORCEABLE}}
    body = {"model": "fake", "input": "hi", "text": text}
    response = await http.post("/v1/responses", json=body)
    error = assert_openai_error(response, 400, param="text.format.schema")
    assert error["message"].startswith("text.format.schema cannot be enforced: "), error


@pytest.mark.parametrize("route", ["chat", "messages"])
async def test_a_forced_call_names_the_tool_whose_schema_cannot_be_enforced(
    http: httpx.AsyncClient, route: str
) -> None:
    """The call grammar holds every tool's schema: the 400 says which tool's is at fault."""
    good = {"type": "object", "properties": {"x": {"type": "string"}}}
    if route == "chat":
        tools = [
            {"type": "function", "function": {"name": name, "parameters": schema}}
            for name, schema in (("fine", good), ("broken", UNENFORCEABLE))
        ]
        body = {"model": "fake", "messages": HELLO, "tools": tools, "tool_choice": "required"}
        response = await http.post("/v1/chat/completions", json=body)
        message = assert_openai_error(response, 400, param="tool_choice")["message"]
    else:
        tools = [
            {"name": name, "input_schema": schema}
            for name, schema in (("fine", good), ("broken", UNENFORCEABLE))
        ]
        body = {
            "model": "fake", "max_tokens": 5, "messages": HELLO, "tools": tools,
            "tool_choice": {"type": "any"},
        }  # fmt: skip
        message = assert_anthropic_error(await http.post("/v1/messages", json=body), 400)
    assert message.endswith("(in the parameters of tool 'broken')"), message


# An integer past 64 bits in a schema (a bound on a uint64 and more): the grammar library cannot
# take it as a Python int.
HUGE = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 10**20}}}


async def test_an_integer_past_64_bits_in_a_schema_is_no_500(http: httpx.AsyncClient) -> None:
    """It was a ValueError ('Value is not JSON serializable'), a 500, where a schema became a
    grammar alone: a `response_format`, and each tool's parameters where a forced call's grammar
    was refused."""
    response_format = {"type": "json_schema", "json_schema": {"name": "n", "schema": HUGE}}
    body = {"model": "fake", "messages": HELLO, "response_format": response_format}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    tools = [
        {"type": "function", "function": {"name": name, "parameters": schema}}
        for name, schema in (("huge", HUGE), ("broken", UNENFORCEABLE))
    ]
    body = {"model": "fake", "messages": HELLO, "tools": tools, "tool_choice": "required"}
    response = await http.post("/v1/chat/completions", json=body)
    message = assert_openai_error(response, 400, param="tool_choice")["message"]
    assert message.endswith("(in the parameters of tool 'broken')"), message


class NoGrammarEngine(FakeEngine):
    """Refuses every grammar, as the vision path does (engines/vlm/front.py)."""

    def check_grammar(self, grammar: str, param: str) -> None:
        raise InvalidRequest("constrained output is not supported here yet", param=param)


async def test_a_forced_call_on_an_engine_without_grammars_blames_no_tool() -> None:
    """The engine's refusal is not about a tool's parameters (each tool's schema alone is
    refused by it too): the 400 says what the engine said."""
    tools = [{"type": "function", "function": {"name": "fine", "parameters": {"type": "object"}}}]
    body = {"model": "fake", "messages": HELLO, "tools": tools, "tool_choice": "required"}
    async with asgi_client(Settings(), [NoGrammarEngine("fake")]) as client:
        response = await client.post("/v1/chat/completions", json=body)
    message = assert_openai_error(response, 400, param="tool_choice")["message"]
    assert message == "constrained output is not supported here yet", message


async def test_a_named_forced_call_names_that_tool(http: httpx.AsyncClient) -> None:
    """A call forced by name holds only that tool's schema: another tool's is not at fault."""
    tools = [
        {"type": "function", "function": {"name": name, "parameters": UNENFORCEABLE}}
        for name in ("other", "forced")
    ]
    choice = {"type": "function", "function": {"name": "forced"}}
    body = {"model": "fake", "messages": HELLO, "tools": tools, "tool_choice": choice}
    response = await http.post("/v1/chat/completions", json=body)
    message = assert_openai_error(response, 400, param="tool_choice")["message"]
    assert message.endswith("(in the parameters of tool 'forced')"), message


async def test_an_unenforceable_beta_output_format_is_named_as_sent(
    http: httpx.AsyncClient,
) -> None:
    """`output_format` (the structured-outputs beta's name): the 400 names it, not
    `output_config.format`, which the client did not send."""
    fmt = {"type": "json_schema", "schema": UNENFORCEABLE}
    body = {"model": "fake", "max_tokens": 5, "messages": HELLO, "output_format": fmt}
    message = assert_anthropic_error(await http.post("/v1/messages", json=body), 400)
    assert message.startswith("output_format.schema cannot be enforced"), message
