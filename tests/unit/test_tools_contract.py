"""Tool calls and structured outputs over HTTP on a scripted engine: what reaches the engine
(tools, grammars), and what the strict SDK gets back (tool_calls, streamed deltas, errors)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import URL, assert_openai_error, chat_body

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(reply=CALL, context_length=4096)


@pytest.fixture
def settings() -> Settings:
    return Settings(max_body_bytes=4 << 20)  # room for the limit tests' large bodies


async def test_a_tool_call_comes_back_as_tool_calls(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    completion = await client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert fake_engine.tools_seen == [WEATHER]
    assert fake_engine.requests[-1].grammar is None  # auto: the model decides


async def test_streamed_tool_call_assembles_in_the_sdk(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="fake", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER]
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None  # as unstreamed: no text, not an empty one
    calls = choice.message.tool_calls or []
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}


async def test_a_streamed_call_opens_with_the_role_and_no_content(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """OpenAI's first chunk of a call is `{"role": "assistant", "content": null, "tool_calls"}`;
    a `content: ""` ahead of it made the Vercel AI SDK's `openai.chat` open an empty text part
    (text-start, text-end) before the call. A text reply still opens with `content: ""`."""
    for reply, first in [
        (CALL, {"role": "assistant", "content": None}),
        ("It is sunny.", {"role": "assistant", "content": ""}),
        ("", {"role": "assistant", "content": ""}),
    ]:
        fake_engine.reply = reply
        async with http.stream("POST", URL, json=chat_body(tools=[WEATHER], stream=True)) as r:
            lines = [line async for line in r.aiter_lines() if line.startswith("data: {")]
        deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in lines]
        assert {key: deltas[0][key] for key in ("role", "content")} == first
        assert [d for d in deltas if "role" in d] == deltas[:1]
        if reply == CALL:
            assert deltas[0]["tool_calls"][0]["function"]["name"] == "get_weather"
            assert all(d.get("content") is None for d in deltas)


async def test_streamed_markup_never_reaches_content(http: httpx.AsyncClient) -> None:
    body = chat_body(tools=[WEATHER], stream=True)
    async with http.stream("POST", URL, json=body) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in lines]
    content = "".join(d.get("content") or "" for d in deltas)
    assert "<tool_call>" not in content and "get_weather" not in content
    heads = [c for d in deltas for c in d.get("tool_calls", []) if "id" in c]
    assert len(heads) == 1 and heads[0]["function"]["name"] == "get_weather"


async def test_plain_text_with_tools_is_content(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    fake_engine.reply = "It is sunny."
    completion = await client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER]
    )
    choice = completion.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("It is sunny.", "stop")
    assert choice.message.tool_calls is None


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("required", None, ["get_weather", "get_time", '("\\n" call)*']),
        ("required", False, ["get_weather", "get_time"]),
        ({"type": "function", "function": {"name": "get_time"}}, None, ["get_time"]),
    ],
)
async def test_forced_tool_choice_is_a_grammar(
    http: httpx.AsyncClient,
    fake_engine: FakeEngine,
    tool_choice: Any,
    parallel: bool | None,
    expected: list[str],
) -> None:
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    response = await http.post(
        URL, json=chat_body(tools=[WEATHER, TIME], tool_choice=tool_choice, **extra)
    )
    assert response.status_code == 200, response.text
    grammar = fake_engine.requests[-1].grammar or ""
    assert "<tool_call>" in grammar and fake_engine.grammars_checked == [grammar]
    for fragment in expected:
        assert fragment in grammar
    if isinstance(tool_choice, dict) or parallel is False:
        assert "call)*" not in grammar
    if isinstance(tool_choice, dict):
        assert "get_weather" not in grammar


@pytest.mark.parametrize(
    ("mode", "forced"), [("required", True), ("auto", False)]
)  # fmt: skip
async def test_allowed_tools_narrow_what_the_model_is_offered(
    http: httpx.AsyncClient, fake_engine: FakeEngine, mode: str, forced: bool
) -> None:
    """The spec's `allowed_tools` choice (a subset of `tools`, which stay the same turn after turn
    so the prompt's cached prefix holds): the model is offered that subset, and `required`
    forces a call among it. It was a 400 saying tool_choice should be a string."""
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": mode,
            "tools": [{"type": "function", "function": {"name": "get_time"}}],
        },
    }
    response = await http.post(URL, json=chat_body(tools=[WEATHER, TIME], tool_choice=choice))
    assert response.status_code == 200, response.text
    assert fake_engine.tools_seen == [TIME]
    grammar = fake_engine.requests[-1].grammar
    assert (grammar is not None) == forced
    if grammar is not None:
        assert "get_time" in grammar and "get_weather" not in grammar


@pytest.mark.parametrize(
    ("tool_choice", "message"),
    [
        ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
            {"type": "function", "function": {"name": "nope"}}]}},
         "tool_choice.allowed_tools names an unknown function 'nope'"),  # as a named one's
        ({"type": "custom", "custom": {"name": "apply_patch"}},
         "a tool_choice of type 'custom' is not supported: it is 'none', 'auto', 'required', "
         "a function or allowed_tools"),
    ],
)  # fmt: skip
async def test_tool_choices_this_server_cannot_honour_say_so(
    http: httpx.AsyncClient, tool_choice: dict[str, Any], message: str
) -> None:
    response = await http.post(URL, json=chat_body(tools=[WEATHER], tool_choice=tool_choice))
    error = assert_openai_error(response, 400, "tool_choice")
    assert error["message"].removeprefix("Invalid value for 'tool_choice': ") == message


TWO_CALLS = CALL + "\n" + CALL.replace("Paris", "Rome")


async def assert_the_paris_call_alone(client: AsyncOpenAI, fields: Any) -> None:
    """Created and streamed, the reply is the first (Paris) call alone, finishing a call."""
    created = await client.chat.completions.create(**fields)
    async with client.chat.completions.stream(**fields) as stream:
        streamed = await stream.get_final_completion()
    for completion in (created, streamed):
        choice = completion.choices[0]
        calls = [c.function.arguments for c in choice.message.tool_calls or []]  # type: ignore[union-attr]
        assert (calls, choice.finish_reason) == (['{"city": "Paris"}'], "tool_calls")


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply=TWO_CALLS, context_length=4096)])
async def test_parallel_tool_calls_false_returns_one_call_under_auto(
    client: AsyncOpenAI,
) -> None:
    """`parallel_tool_calls: false` is at most one call, also where no grammar forces the call:
    a second one the model wrote is left out, streamed or not (as vLLM does), not returned for
    an agent that asked to run its calls one at a time."""
    fields: Any = {"model": "fake", "messages": [{"role": "user", "content": "weather?"}],
                   "tools": [WEATHER], "parallel_tool_calls": False}  # fmt: skip
    await assert_the_paris_call_alone(client, fields)
    both = await client.chat.completions.create(**{**fields, "parallel_tool_calls": True})
    assert len(both.choices[0].message.tool_calls or []) == 2


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply=TWO_CALLS, context_length=4096)])
async def test_one_call_turn_cut_only_after_its_call_finishes_as_a_call(
    client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    """Under `parallel_tool_calls: false` a limit met inside a second call, which is left out,
    did not cut the turn: the client gets one whole call, finishing as a call on every wire
    (the OpenAI Agents SDK raises on a Responses `incomplete`), streamed or not. With parallel
    calls the cut call was the client's: `length` stays."""
    limit = len(TWO_CALLS) - len('me"}}\n</tool_call>')  # inside the second call's arguments
    fields: Any = {"model": "fake", "messages": [{"role": "user", "content": "weather?"}],
                   "tools": [WEATHER], "parallel_tool_calls": False,
                   "max_tokens": limit}  # fmt: skip
    await assert_the_paris_call_alone(client, fields)
    both = await client.chat.completions.create(**{**fields, "parallel_tool_calls": True})
    assert both.choices[0].finish_reason == "length"

    tool = {"type": "function", **WEATHER["function"]}
    body = {"model": "fake", "input": "weather?", "tools": [tool], "parallel_tool_calls": False,
            "max_output_tokens": limit}  # fmt: skip
    response = (await http.post("/v1/responses", json=body)).json()
    assert (response["status"], [item["status"] for item in response["output"]]) == (
        "completed",
        ["completed"],
    )
    async with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as sse:
        last = [line async for line in sse.aiter_lines() if line.startswith("event:")][-1]
    assert last == "event: response.completed"

    anthropic_tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
    message = {"model": "fake", "max_tokens": limit, "tools": [anthropic_tool],
               "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
               "messages": [{"role": "user", "content": "weather?"}]}  # fmt: skip
    reply = (await http.post("/v1/messages", json=message)).json()
    assert (reply["stop_reason"], [b["type"] for b in reply["content"]]) == (
        "tool_use",
        ["tool_use"],
    )
    async with http.stream("POST", "/v1/messages", json={**message, "stream": True}) as sse:
        text = "".join([line async for line in sse.aiter_lines()])
    assert '"stop_reason":"tool_use"' in text.replace(" ", "")


async def test_tool_choice_none_hides_the_tools(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    response = await http.post(URL, json=chat_body(tools=[WEATHER], tool_choice="none"))
    assert response.status_code == 200
    assert fake_engine.tools_seen == []
    assert "<tool_call>" in response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        (  # arguments are an object: a forced call of a string's schema came back as text
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "string"}},
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
        ),
        (  # a list of types is an object's only where it holds "object"
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": ["string", "null"]}},
                    }
                ],
            },
            "tools[0].function.parameters",
        ),
        ({"tool_choice": "sometimes", "tools": [WEATHER]}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "x-unsupported": True},
                    },
                }
            },
            "response_format.json_schema.schema",
        ),
    ],
)
async def test_bad_tool_and_format_requests_are_400(
    http: httpx.AsyncClient, fields: dict[str, Any], param: str
) -> None:
    response = await http.post(URL, json=chat_body(**fields))
    assert_openai_error(response, 400, param)


async def test_json_schema_becomes_the_grammar(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    response = await http.post(URL, json=chat_body(response_format=response_format))
    assert response.status_code == 200
    grammar = json.loads(fake_engine.requests[-1].grammar or "{}")
    compiled = grammar["grammars"][0]["json_schema"]
    assert compiled.pop("x-guidance")["whitespace_flexible"] is False
    assert compiled == schema


async def test_message_count_and_schema_size_limits(http: httpx.AsyncClient) -> None:
    many = [{"role": "user", "content": "x"}] * 4097
    assert_openai_error(await http.post(URL, json=chat_body(messages=many)), 400, "messages")
    big = {"type": "object", "description": "x" * (Settings().max_schema_bytes + 1)}
    response_format = {"type": "json_schema", "json_schema": {"name": "b", "schema": big}}
    response = await http.post(URL, json=chat_body(response_format=response_format))
    assert_openai_error(response, 400, "response_format")
    tool = {"type": "function", "function": {"name": "f", "parameters": big}}
    assert_openai_error(await http.post(URL, json=chat_body(tools=[tool])), 400, "tools")
    too_many = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]
    assert_openai_error(await http.post(URL, json=chat_body(tools=too_many)), 400, "tools")


FENCED = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'


@pytest.mark.parametrize("untagged", [True, False])
async def test_untagged_fenced_call_follows_the_model_setting(
    http: httpx.AsyncClient, fake_engine: FakeEngine, untagged: bool
) -> None:
    """A ```json-fenced call is a call unless the model's `untagged_tool_calls` is off."""
    assert fake_engine.info is not None
    fake_engine.info = dataclasses.replace(fake_engine.info, untagged_tool_calls=untagged)
    fake_engine.reply = FENCED
    response = await http.post(URL, json=chat_body(tools=[WEATHER]))
    message = response.json()["choices"][0]["message"]
    if untagged:
        assert message["content"] is None
        assert message["tool_calls"][0]["function"]["name"] == "get_weather"
    else:
        assert message["content"] == FENCED and "tool_calls" not in message


QWEN3_CODER_CALL = (
    "Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "</function>\n</tool_call>"
)
HARMONY_CALL = (
    "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>"
    'commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'
)


@pytest.mark.parametrize(
    ("tool_format", "reply", "content", "reasoning"),
    [
        ("qwen3_coder", QWEN3_CODER_CALL, "Checking.", None),
        ("harmony", HARMONY_CALL, None, "Need the weather."),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_familys_own_format_comes_back_as_tool_calls(
    client: AsyncOpenAI,
    fake_engine: FakeEngine,
    tool_format: str,
    reply: str,
    content: str | None,
    reasoning: str | None,
    stream: bool,
) -> None:
    """The model's format (ChatModelInfo.tool_format) decides the parser: the strict SDK gets
    OpenAI's shape, streamed (assembled from `delta.tool_calls`) and not."""
    assert fake_engine.info is not None
    fake_engine.info = dataclasses.replace(
        fake_engine.info, tool_format=tool_format, reasoning=tool_format == "harmony"
    )
    fake_engine.reply = reply
    messages: Any = [{"role": "user", "content": "weather?"}]
    tools: Any = [WEATHER]
    completion: Any
    if stream:
        async with client.chat.completions.stream(
            model="fake", messages=messages, tools=tools
        ) as events:
            async for _ in events:
                pass
            completion = await events.get_final_completion()
    else:
        completion = await client.chat.completions.create(
            model="fake", messages=messages, tools=tools
        )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert ((choice.message.content or "").strip() or None) == content
    assert getattr(choice.message, "reasoning_content", None) == reasoning
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}


@pytest.mark.parametrize(
    ("tool_format", "written_as"),
    [
        ("qwen3_coder", "<function=get_weather>"),
        ("harmony", "commentary to=functions.get_weather "),
        ("gemma4", '"call:get_weather"'),
        ("function_gemma", '"<tool_call>"'),  # no grammar of its own: forced as json_tools
    ],
)
async def test_a_forced_call_is_constrained_in_the_familys_format(
    http: httpx.AsyncClient, fake_engine: FakeEngine, tool_format: str, written_as: str
) -> None:
    assert fake_engine.info is not None
    fake_engine.info = dataclasses.replace(fake_engine.info, tool_format=tool_format)
    fake_engine.reply = CALL  # json_tools: how the function_gemma model is forced to write it
    body = chat_body(
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    response = await http.post(URL, json=body)
    assert response.status_code == 200
    grammar = fake_engine.requests[-1].grammar or ""
    assert written_as in grammar
    if tool_format == "function_gemma":
        message = response.json()["choices"][0]["message"]
        assert message["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_cut_inside_its_arguments_is_no_tool_calls_finish(
    client: AsyncOpenAI, fake_engine: FakeEngine, stream: bool
) -> None:
    """A stop sequence met mid-call (here the engine's end-of-sequence, as the fake ends) leaves
    arguments no client can parse: the finish is "stop", not "tool_calls" (which agents run)."""
    fake_engine.reply = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P'
    body: dict[str, Any] = {
        "model": "fake",
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [WEATHER],
    }
    if stream:
        chunks = [c async for c in await client.chat.completions.create(**body, stream=True)]
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert reasons[-1] == "stop"
        arguments = "".join(
            call.function.arguments or ""
            for c in chunks
            if c.choices
            for call in c.choices[0].delta.tool_calls or []
            if call.function is not None
        )
    else:
        completion = await client.chat.completions.create(**body)
        assert completion.choices[0].finish_reason == "stop"
        calls = completion.choices[0].message.tool_calls or []
        arguments = calls[0].function.arguments  # type: ignore[union-attr]
    assert arguments == '{"city": "P'


DEEP_ARGUMENTS = "[" * 1500 + "]" * 1500  # past Python's recursion limit, parsed or repaired
DEEP_CALL = '{"name": "get_weather", "arguments": {"city": ' + DEEP_ARGUMENTS + "}}"
# Parsed by json.loads, but past the recursion limit for a recursive walk of what it parsed.
WALKED_CALL = DEEP_CALL.replace(DEEP_ARGUMENTS, "[" * 600 + "]" * 600)
LAST_STREAMED = {
    "/v1/chat/completions": "data: [DONE]",
    "/v1/responses": '"type":"response.completed"',
    "/v1/messages": '"type":"message_stop"',
    "/api/chat": '"done":true',
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", list(LAST_STREAMED))
@pytest.mark.parametrize(
    "reply",
    [DEEP_CALL, *(f"<tool_call>\n{call}\n</tool_call>" for call in (DEEP_CALL, WALKED_CALL))],
)
async def test_output_json_nested_too_deeply_is_answered(
    http: httpx.AsyncClient, fake_engine: FakeEngine, reply: str, path: str, stream: bool
) -> None:
    """A prompt can make the model write JSON nested past the recursion limit; it was a 500 (a
    stream cut short) on every API. Untagged it is text; a tagged call with such arguments is
    a call whose arguments do not parse, as one cut short is."""
    fake_engine.reply = reply
    messages = [{"role": "user", "content": "weather?"}]
    function = WEATHER["function"]
    assert isinstance(function, dict)
    body: dict[str, Any] = {
        "/v1/chat/completions": {"messages": messages, "tools": [WEATHER]},
        "/v1/responses": {"input": "weather?", "tools": [{"type": "function", **function}]},
        "/v1/messages": {
            "max_tokens": 4000,
            "messages": messages,
            "tools": [{"name": function["name"], "input_schema": function["parameters"]}],
        },
        "/api/chat": {"messages": messages, "tools": [WEATHER]},
    }[path]
    response = await http.post(path, json={"model": "fake", "stream": stream, **body})
    assert response.status_code == 200, response.text
    if stream:
        assert LAST_STREAMED[path] in response.text.strip().splitlines()[-1]
    else:
        assert "error" not in response.json() or response.json()["error"] is None
