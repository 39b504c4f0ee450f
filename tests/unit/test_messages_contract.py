"""The HTTP contract of Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) on a
scripted fake engine, through the official `anthropic` SDK in strict mode and as raw HTTP."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from anthropic import AsyncAnthropic
from fastapi import FastAPI

from engines.errors import Overloaded
from engines.llm.templates import CONTINUE_FINAL
from engines.pool import EnginePool
from engines.types import ErrorEvent, FinishEvent
from server.app import create_app
from server.images import TOOL_IMAGE_TEXT
from server.schemas.anthropic import MessagesRequest
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.servers import serve, wait_until

URL = "/v1/messages"
HELLO = [{"role": "user", "content": "hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def messages_body(**fields: Any) -> dict[str, Any]:
    return {"model": "fake", "max_tokens": 100, "messages": HELLO, **fields}


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every SSE event; asserts each has an `event:` line."""
    events = []
    for raw in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in raw.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert lines[0].startswith("event: "), raw
        events.append(
            (lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: ")))
        )
    return events


def assert_anthropic_error(response: httpx.Response, status: int, type_: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == type_
    return str(body["error"]["message"])


@pytest.fixture
def settings() -> Settings:
    return Settings(max_body_bytes=1 << 20)


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(context_length=4096)


@pytest.fixture
async def app(fake_engine: FakeEngine, settings: Settings) -> AsyncIterator[FastAPI]:
    pool = EnginePool([fake_engine])
    served = create_app(settings, pool)
    await pool.start()  # ASGITransport runs no lifespan
    yield served
    await pool.drain(timeout=1)


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


def sdk(app: FastAPI, api_key: str = "unused") -> AsyncAnthropic:
    """The official SDK, strict, in-process (it brings its own HTTP library, httpx2)."""
    transport = httpx2.ASGITransport(app=app)
    return AsyncAnthropic(
        base_url="http://127.0.0.1",
        api_key=api_key,
        http_client=httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1"),
        _strict_response_validation=True,
        max_retries=0,
    )


@pytest.fixture
async def claude(app: FastAPI) -> AsyncIterator[AsyncAnthropic]:
    async with sdk(app) as client:
        yield client


def prompt_of(engine: FakeEngine) -> str:
    return "".join(chr(t) for t in engine.requests[-1].prompt_tokens)


async def test_create_through_the_strict_sdk(claude: AsyncAnthropic) -> None:
    message = await claude.messages.create(model="fake", max_tokens=100, messages=HELLO)  # type: ignore[arg-type]
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello there!"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == len("<user>hi")
    assert message.usage.output_tokens == len("Hello there!")
    assert message.model == "fake"


async def test_stream_through_the_sdk_helper(claude: AsyncAnthropic) -> None:
    async with claude.messages.stream(model="fake", max_tokens=100, messages=HELLO) as stream:  # type: ignore[arg-type]
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == "Hello there!"
    assert final.content[0].text == "Hello there!"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 12 and final.usage.input_tokens == len("<user>hi")


async def test_every_stream_event_is_named_in_order(http: httpx.AsyncClient) -> None:
    response = await http.post(f"{URL}?beta=true", json=messages_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1:-2] == ["content_block_start"] + ["content_block_delta"] * (len(names) - 5) + [
        "content_block_stop"
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"]["output_tokens"] == 12


async def test_max_tokens_beyond_the_context_is_clamped_not_refused(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    # The SDK itself refuses to send this unstreamed (it would "take longer than 10 minutes").
    response = await http.post(URL, json=messages_body(max_tokens=128_000))
    assert response.status_code == 200, response.text
    assert response.json()["stop_reason"] == "end_turn"
    assert fake_engine.requests[-1].max_tokens == 4096 - len("<user>hi")


async def test_max_tokens_reached_is_the_stop_reason(claude: AsyncAnthropic) -> None:
    message = await claude.messages.create(model="fake", max_tokens=5, messages=HELLO)  # type: ignore[arg-type]
    assert message.content[0].text == "Hello"  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"


async def test_system_as_text_blocks_leads_and_system_messages_stay_in_place(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """The fake renders every turn where it is (a template that takes later system turns; the
    renderer merges them for one that does not: tests/engines/test_system_turns.py)."""
    body = messages_body(
        system=[
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Answer in English."},
        ],
        messages=[
            {"role": "system", "content": "cwd: /tmp"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}],
            },
        ],
    )
    response = await http.post(URL, json=body)
    assert response.status_code == 200, response.text
    assert prompt_of(fake_engine) == (
        "<system>You are terse.\nAnswer in English.<system>cwd: /tmp<user>hi\nthere"
    )


async def test_sampling_and_stop_sequences_reach_the_engine(
    claude: AsyncAnthropic, fake_engine: FakeEngine
) -> None:
    await claude.messages.create(
        model="fake",
        max_tokens=50,
        messages=HELLO,  # type: ignore[arg-type]
        stop_sequences=["END", "STOP"],
        extra_body={"temperature": 0.25, "top_p": 0.5, "top_k": 7},  # not arguments of the SDK
    )
    request = fake_engine.requests[-1]
    assert request.stop == ("END", "STOP")
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.top_k) == (
        0.25,
        0.5,
        7,
    )


async def test_fields_claude_code_sends_are_accepted_and_named(http: httpx.AsyncClient) -> None:
    body = messages_body(
        metadata={"user_id": "u"},
        context_management={"edits": []},
        output_config={"effort": "high"},
        thinking={"type": "adaptive", "display": "omitted"},
        tools=[{**WEATHER, "defer_loading": True, "cache_control": {"type": "ephemeral"}}],
    )
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "a-2025,b-2025"}
    response = await http.post(f"{URL}?beta=true", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-mlxd-ignored-fields"] == "metadata,context_management"


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply=CALL, context_length=4096)])
async def test_a_tool_call_is_a_tool_use_block(
    claude: AsyncAnthropic, fake_engine: FakeEngine
) -> None:
    message = await claude.messages.create(
        model="fake",
        max_tokens=200,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["tool_use"]  # newlines dropped
    call = message.content[0]
    assert call.type == "tool_use" and call.name == "get_weather"
    assert call.input == {"city": "Paris"}
    assert fake_engine.tools_seen == [
        {"type": "function", "function": {k: WEATHER[k] for k in ("name", "description")}
         | {"parameters": WEATHER["input_schema"]}}
    ]  # fmt: skip
    assert fake_engine.requests[-1].grammar is None  # auto: the model decides


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply=CALL, context_length=4096)])
async def test_a_streamed_tool_call_assembles_in_the_sdk(
    http: httpx.AsyncClient, claude: AsyncAnthropic
) -> None:
    async with claude.messages.stream(
        model="fake",
        max_tokens=200,
        messages=HELLO,
        tools=[WEATHER],  # type: ignore[arg-type, list-item]
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}
    raw = await http.post(URL, json=messages_body(stream=True, tools=[WEATHER]))
    deltas = [data["delta"] for name, data in sse_events(raw.text) if name == "content_block_delta"]
    assert {delta["type"] for delta in deltas} == {"input_json_delta"}
    assert json.loads("".join(d["partial_json"] for d in deltas)) == {"city": "Paris"}


async def test_a_tool_round_trip_reaches_the_template(
    claude: AsyncAnthropic, fake_engine: FakeEngine
) -> None:
    await claude.messages.create(
        model="fake",
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Use the tool.", "signature": "s"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "22C"}]},
                    {"type": "text", "text": "and tomorrow?"},
                ],
            },
        ],
    )  # fmt: skip
    assert (
        prompt_of(fake_engine) == "<user>weather?<assistant>Checking.<tool>22C<user>and tomorrow?"
    )


@pytest.mark.parametrize(
    ("tool_choice", "grammar", "tools_shown"),
    [
        ({"type": "auto"}, False, True),
        ({"type": "any"}, True, True),
        ({"type": "tool", "name": "get_weather"}, True, True),
        ({"type": "none"}, False, False),
    ],
)
async def test_tool_choice_maps_to_the_chat_path(
    http: httpx.AsyncClient,
    fake_engine: FakeEngine,
    tool_choice: dict[str, Any],
    grammar: bool,
    tools_shown: bool,
) -> None:
    response = await http.post(URL, json=messages_body(tools=[WEATHER], tool_choice=tool_choice))
    assert response.status_code == 200, response.text
    assert (fake_engine.requests[-1].grammar is not None) is grammar
    assert bool(fake_engine.tools_seen) is tools_shown


@pytest.mark.parametrize(
    "fake_engine", [FakeEngine(reply="Let me think.</think>Paris.", reasoning=True)]
)
async def test_reasoning_is_a_signed_thinking_block(claude: AsyncAnthropic) -> None:
    message = await claude.messages.create(model="fake", max_tokens=100, messages=HELLO)  # type: ignore[arg-type]
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    assert thinking.signature
    assert message.content[1].text == "Paris."  # type: ignore[union-attr]
    async with claude.messages.stream(model="fake", max_tokens=100, messages=HELLO) as stream:  # type: ignore[arg-type]
        streamed = await stream.get_final_message()
    assert [b.to_dict() for b in streamed.content] == [b.to_dict() for b in message.content]


@pytest.mark.parametrize(
    "fake_engine", [FakeEngine(reply="Let me think.</think>Paris.", reasoning=True)]
)
async def test_thinking_settings(http: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    omitted = await http.post(
        URL, json=messages_body(thinking={"type": "adaptive", "display": "omitted"})
    )
    assert omitted.json()["content"][0]["thinking"] == ""
    assert omitted.json()["content"][0]["signature"]
    assert fake_engine.template_kwargs_seen == {}
    await http.post(URL, json=messages_body(thinking={"type": "disabled"}))
    assert fake_engine.template_kwargs_seen == {"enable_thinking": False}
    await http.post(URL, json=messages_body(thinking={"type": "enabled", "budget_tokens": 2048}))
    assert fake_engine.template_kwargs_seen == {"enable_thinking": True}


async def test_a_tool_whose_input_is_no_object_is_a_400(claude: AsyncAnthropic) -> None:
    """A tool's input is an object (Anthropic's `input_schema.type` is `object`): a forced call
    of a string's schema came back as text holding the call's markup."""
    tool: Any = {"name": "f", "input_schema": {"type": "string"}}
    with pytest.raises(anthropic.BadRequestError, match=r"tools\[0\]\.input_schema"):
        await claude.messages.create(
            model="fake", max_tokens=5, messages=HELLO, tools=[tool], tool_choice={"type": "any"}
        )


async def test_the_sdk_reads_each_requests_id(claude: AsyncAnthropic) -> None:
    """Anthropic's SDKs read a request's id from `request-id` (`message._request_id`, a stream's
    `request_id`, an error's): the id mlxd logs the request under (`x-request-id`)."""
    raw = await claude.messages.with_raw_response.create(model="fake", max_tokens=5, messages=HELLO)
    message = await raw.parse()
    assert message._request_id == raw.headers["x-request-id"] == message.id
    async with claude.messages.stream(model="fake", max_tokens=5, messages=HELLO) as stream:
        streamed = await stream.get_final_message()
    assert stream.request_id == streamed.id
    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.create(model="fake", max_tokens=0, messages=HELLO)
    assert refused.value.request_id == refused.value.response.headers["x-request-id"]


async def test_count_tokens_matches_the_prompt_the_request_would_use(
    claude: AsyncAnthropic,
) -> None:
    counted = await claude.messages.count_tokens(
        model="fake", messages=[{"role": "user", "content": "foo"}]
    )
    assert counted.input_tokens == len("<user>foo")
    message = await claude.messages.create(
        model="fake", max_tokens=10, messages=[{"role": "user", "content": "foo"}]
    )
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


USE = {"type": "tool_use", "id": "t", "name": "x"}


def one_block(role: str, **block: Any) -> dict[str, Any]:
    return {"role": role, "content": [block]}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": "fake", "messages": HELLO}, "max_tokens"),
        (messages_body(max_tokens=0), "max_tokens"),
        (messages_body(messages=[]), "messages"),
        (messages_body(messages=[one_block("user", type="image", source={})]),
         "messages[0].content[0].source"),
        (messages_body(messages=[one_block("assistant", **USE, input=3)]),
         "messages[0].content[0].input"),
        (messages_body(messages=[one_block("user", **USE, input={})]),
         "user message cannot hold tool_use"),
        (messages_body(temperature=1.5), "temperature"),
        (messages_body(tool_choice={"type": "tool"}), "name"),
        (messages_body(tools=[{"name": "bad name", "input_schema": {}}]), "tools[0].name"),
        (messages_body(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), "nope"),
        (messages_body(tool_choice={"type": "any"}), "tool_choice of type 'any' needs tools"),
        (messages_body(tool_choice={"type": "tool", "name": "get_weather"}), "needs tools"),
        (messages_body(tools=[{"type": "web_search_20250305", "name": "web_search"}],
                       tool_choice={"type": "any"}), "mlxd runs none of its tools"),
        (messages_body(thinking={"type": "sometimes"}), "thinking.type"),
    ],
)  # fmt: skip
async def test_bad_requests_are_anthropic_400s_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], needle: str
) -> None:
    response = await http.post(URL, json=body)
    assert needle in assert_anthropic_error(response, 400, "invalid_request_error")


async def test_errors_raise_the_sdks_typed_exceptions(
    claude: AsyncAnthropic, http: httpx.AsyncClient
) -> None:
    with pytest.raises(anthropic.NotFoundError):
        await claude.messages.create(model="nope", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.create(model="fake", max_tokens=-1, messages=HELLO)  # type: ignore[arg-type]
    assert_anthropic_error(await http.post(URL, content=b"{"), 400, "invalid_request_error")
    assert_anthropic_error(await http.get(URL), 405, "invalid_request_error")
    assert_anthropic_error(await http.post(f"{URL}/nope", json={}), 404, "not_found_error")


@pytest.mark.parametrize("fake_engine", [FakeEngine(refuse_with=Overloaded("queue full", 2))])
async def test_overloaded_is_a_rate_limit_error_with_retry_after(
    claude: AsyncAnthropic, http: httpx.AsyncClient
) -> None:
    response = await http.post(URL, json=messages_body())
    assert_anthropic_error(response, 429, "rate_limit_error")
    assert response.headers["retry-after"] == "2"
    with pytest.raises(anthropic.RateLimitError):
        await claude.messages.create(model="fake", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply="abcdefgh", fail_after=3)])
async def test_a_failure_mid_stream_is_an_error_event_after_the_text(
    http: httpx.AsyncClient, claude: AsyncAnthropic
) -> None:
    response = await http.post(URL, json=messages_body(stream=True))
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[-1] == "error" and "message_stop" not in names
    assert events[-1][1]["error"]["type"] == "api_error"
    text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert text == "abc"
    with pytest.raises(anthropic.APIStatusError):
        async with claude.messages.stream(model="fake", max_tokens=10, messages=HELLO) as stream:  # type: ignore[arg-type]
            await stream.get_final_message()
    failed = await http.post(URL, json=messages_body())
    assert_anthropic_error(failed, 500, "api_error")


@pytest.mark.parametrize("settings", [Settings(api_key="sekrit")])
async def test_x_api_key_and_bearer_are_both_accepted(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    by_header = await http.post(URL, json=messages_body(), headers={"x-api-key": "sekrit"})
    by_bearer = await http.post(
        URL, json=messages_body(), headers={"authorization": "Bearer sekrit"}
    )
    wrong = await http.post(URL, json=messages_body(), headers={"x-api-key": "nope"})
    assert (by_header.status_code, by_bearer.status_code) == (200, 200)
    assert_anthropic_error(wrong, 401, "authentication_error")
    async with sdk(app, api_key="sekrit") as client:  # sends it as `x-api-key`
        message = await client.messages.create(model="fake", max_tokens=5, messages=HELLO)  # type: ignore[arg-type]
    assert message.content[0].text == "Hello"  # type: ignore[union-attr]


async def test_pings_while_the_prompt_prefills() -> None:
    engine = FakeEngine(prefill_delay_s=0.5, context_length=4096)
    app = create_app(Settings(keepalive_interval_s=0.1), EnginePool([engine]))
    with serve(app) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            response = await http.post(URL, json=messages_body(stream=True))
    names = [name for name, _ in sse_events(response.text)]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    first_block = names.index("content_block_start")
    assert "ping" in names[1:first_block]


@pytest.fixture
async def slow_url() -> AsyncIterator[tuple[str, FakeEngine]]:
    engine = FakeEngine(reply="word " * 200, token_delay_s=0.01, context_length=4096)
    with serve(create_app(Settings(), EnginePool([engine]))) as url:
        yield url, engine


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_leaves_cancels(slow_url: tuple[str, FakeEngine], stream: bool) -> None:
    url, engine = slow_url
    body = messages_body(stream=stream, max_tokens=1000)
    async with httpx.AsyncClient(base_url=url, timeout=0.3) as http:
        if stream:
            async with http.stream("POST", URL, json=body) as response:
                seen = 0
                async for line in response.aiter_lines():
                    seen += line.startswith("event: content_block_delta")
                    if seen >= 3:
                        break  # leaving the block closes the connection mid-stream
        else:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(URL, json=body)
    assert await wait_until(lambda: engine.active == 0, timeout=2)
    assert 0 < engine.tokens_generated < 1000


CLAUDE_CODE = json.loads((Path(__file__).parent / "claude_code_first_request.json").read_text())


@pytest.mark.parametrize("settings", [Settings(api_key="local")])
@pytest.mark.parametrize("stream", [True, False])  # after a failed stream it resends unstreamed
async def test_claude_codes_first_request(
    http: httpx.AsyncClient, fake_engine: FakeEngine, stream: bool
) -> None:
    body = {**CLAUDE_CODE["body"], "model": "fake", "stream": stream}
    assert body["max_tokens"] == 32_000 and body["thinking"] == {"type": "adaptive"}
    response = await http.post(CLAUDE_CODE["path"], json=body, headers=CLAUDE_CODE["headers"])
    assert response.status_code == 200, response.text
    assert fake_engine.requests[-1].max_tokens == 4096 - len(fake_engine.requests[-1].prompt_tokens)
    assert fake_engine.tools_seen and fake_engine.tools_seen[0]["function"]["name"] == "Read"
    assert prompt_of(fake_engine).startswith("<system>You are a Claude agent")  # no billing line
    assert response.headers["x-mlxd-ignored-fields"] == "metadata,context_management"
    if stream:
        names = [name for name, _ in sse_events(response.text)]
        assert names[0] == "message_start" and names[-1] == "message_stop"
    else:
        assert response.json()["content"] == [{"type": "text", "text": "Hello there!"}]


async def test_claude_codes_billing_line_is_not_in_the_prompt(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """Claude Code's billing line carries a per-session suffix (from the first user message): two
    sessions differing only there get the same prompt, so they share cached prefixes."""
    prompts = []
    for suffix in ("461", "342"):
        billing = f"x-anthropic-billing-header: cc_version=2.1.332.{suffix}; cc_entrypoint=sdk-cli;"
        body = {
            "model": "fake",
            "max_tokens": 10,
            "system": [{"type": "text", "text": billing}, {"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": f"{billing}\nEnvironment: linux"},
            ],
        }
        response = await http.post("/v1/messages", json=body)
        assert response.status_code == 200, response.text
        prompts.append(prompt_of(fake_engine))
    assert prompts[0] == prompts[1] == "<system>Be brief.<user>hi<system>Environment: linux"


async def test_a_system_message_without_a_top_level_system_stays_in_place(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    body = messages_body(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "Environment: linux"}]},
        ]
    )
    response = await http.post(URL, json=body)
    assert response.status_code == 200, response.text
    assert prompt_of(fake_engine) == "<user>hi<system>Environment: linux"


CLAUDE_CODE_2_1_332 = json.loads(
    (Path(__file__).parent / "claude_code_2_1_332_first_request.json").read_text()
)
READ_CALL = '<tool_call>\n{"name": "Read", "arguments": {"file_path": "notes.txt"}}\n</tool_call>'


async def test_claude_code_2_1_332_tool_round_trip(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """Claude Code 2.1.332's turn and its follow-up after running Read: its default model name
    (served here under the fake's name), an empty `system` message carrying `output_config` after
    the user turn, `thinking.display`; the call streams as a `tool_use` block whose
    `input_json_delta`s assemble to the input, and the result reaches the template."""
    capture = CLAUDE_CODE_2_1_332
    body = {**capture["body"], "model": "fake"}
    assert capture["body"]["model"] == "claude-opus-5-5"
    assert body["thinking"] == {"type": "adaptive", "display": "omitted"}
    assert body["messages"][1] == {
        "role": "system",
        "content": [],
        "output_config": {"effort": "medium"},
    }
    fake_engine.reply = READ_CALL
    response = await http.post(capture["path"], json=body, headers=capture["headers"])
    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    [start] = [data for name, data in events if name == "content_block_start"]
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["name"] == "Read"
    partial = "".join(
        data["delta"]["partial_json"] for name, data in events if name == "content_block_delta"
    )
    assert json.loads(partial) == {"file_path": "notes.txt"}
    [delta] = [data for name, data in events if name == "message_delta"]
    assert delta["delta"]["stop_reason"] == "tool_use" and events[-1][0] == "message_stop"
    assert prompt_of(fake_engine).startswith("<system>You are a Claude agent")  # no billing line
    assert prompt_of(fake_engine).count("<system>") == 1  # the empty system message adds none

    fake_engine.reply = "The secret word is pineapple."
    follow_up = {**body, "messages": capture["follow_up_messages"]}
    response = await http.post(capture["path"], json=follow_up, headers=capture["headers"])
    assert response.status_code == 200, response.text
    text = "".join(
        data["delta"].get("text", "") for name, data in sse_events(response.text)
        if name == "content_block_delta"
    )  # fmt: skip
    assert text == "The secret word is pineapple."
    result = capture["follow_up_messages"][3]["content"][0]["content"]
    assert prompt_of(fake_engine).endswith("<assistant><tool>" + result)


async def test_models_in_anthropics_shape_when_asked_with_anthropic_version(
    claude: AsyncAnthropic, http: httpx.AsyncClient
) -> None:
    page = await claude.models.list()
    assert [model.id for model in page.data] == ["fake"]
    assert page.data[0].max_input_tokens == 4096 and page.data[0].type == "model"
    one = await claude.models.retrieve("fake")
    assert one.id == "fake" and one.display_name == "fake"
    with pytest.raises(anthropic.NotFoundError):
        await claude.models.retrieve("nope")
    plain = await http.get("/v1/models")  # without the header: OpenAI's list
    assert plain.json()["object"] == "list"


async def test_anthropic_model_list_pages_by_limit_and_cursors() -> None:
    """`limit`, `after_id` and `before_id` as Anthropic's API: the SDK's auto-pagination walks
    every chat model once, in order; a bad limit or cursor is a 400 in Anthropic's shape."""
    names = [f"m{i}" for i in range(5)]
    pool = EnginePool([FakeEngine(name=name) for name in names])
    await pool.start()
    try:
        app = create_app(Settings(), pool)
        async with sdk(app) as claude:
            assert [model.id async for model in claude.models.list(limit=2)] == names
            page = await claude.models.list(limit=2, after_id="m1")
            assert [m.id for m in page.data] == ["m2", "m3"] and page.has_more
            page = await claude.models.list(limit=2, before_id="m3")
            assert [m.id for m in page.data] == ["m1", "m2"] and page.has_more
            page = await claude.models.list(before_id="m2")
            assert [m.id for m in page.data] == ["m0", "m1"] and not page.has_more
            assert (await claude.models.list()).has_more is False
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            headers = {"anthropic-version": "2023-06-01"}
            for query in ("limit=0", "limit=1001", "limit=x", "limit=%C2%B2", "after_id=nope"):
                response = await http.get(f"/v1/models?{query}", headers=headers)
                assert_anthropic_error(response, 400, "invalid_request_error")
    finally:
        await pool.drain(timeout=1)


def test_tool_use_input_keeps_its_characters_in_the_chat_request() -> None:
    """A `tool_use` input goes back to the template as the model wrote it (`北京`, not
    `\\u5317\\u4eac`): the history the model sees, and the prompt's cached prefix, match its
    own output."""
    request = MessagesRequest.model_validate(
        {
            "model": "fake",
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t", "name": "get_weather",
                     "input": {"city": "北京 🌧"}},
                ]},
            ],
        }
    )  # fmt: skip
    call = request.chat_body()["messages"][1]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"city": "北京 🌧"}'


class StoppedBySequence(FakeEngine):
    """Ends its reply as a stop sequence would: reason `stop`, naming the string `STOP`."""

    def _end(self, stream: Any, choices: int, event: FinishEvent | ErrorEvent) -> None:
        if isinstance(event, FinishEvent) and event.reason == "stop":
            event = dataclasses.replace(event, stop_sequence="STOP")
        super()._end(stream, choices, event)


CUT = CALL[: CALL.index("Paris") + 1]  # the call cut inside its arguments: '{"city": "P'


async def final_streamed(claude: AsyncAnthropic, **fields: Any) -> anthropic.types.Message:
    async with claude.messages.stream(model="fake", messages=HELLO, **fields) as stream:
        return await stream.get_final_message()


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply=CALL, context_length=4096)])
async def test_a_tool_call_cut_by_max_tokens(claude: AsyncAnthropic) -> None:
    """`max_tokens` (or the context's room it is lowered to) running out inside a call's
    arguments: the call is a `tool_use` block whose input is what the SDK makes of the cut
    JSON when it is streamed (`{}`), with `stop_reason: max_tokens`, not a 500."""
    fields: dict[str, Any] = {"max_tokens": len(CUT), "tools": [WEATHER]}
    message = await claude.messages.create(model="fake", messages=HELLO, **fields)
    streamed = await final_streamed(claude, **fields)
    for reply in (message, streamed):
        assert reply.stop_reason == "max_tokens" and reply.stop_sequence is None
        assert [(b.type, getattr(b, "input", None)) for b in reply.content] == [("tool_use", {})]


@pytest.mark.parametrize(
    "fake_engine", [StoppedBySequence(reply=CUT, context_length=4096)], ids=["cut"]
)
async def test_a_stop_sequence_inside_a_tool_call(claude: AsyncAnthropic) -> None:
    """A stop sequence that cuts a call: `stop_reason: stop_sequence` with the string (Anthropic
    sets `stop_sequence` only then), not `tool_use` for a call that never finished; no 500."""
    fields: dict[str, Any] = {"max_tokens": 100, "tools": [WEATHER], "stop_sequences": ["STOP"]}
    message = await claude.messages.create(model="fake", messages=HELLO, **fields)
    streamed = await final_streamed(claude, **fields)
    for reply in (message, streamed):
        assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == "STOP"
        assert [(b.type, getattr(b, "input", None)) for b in reply.content] == [("tool_use", {})]


SURROGATE_CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "\\ud800"}}\n</tool_call>'
)


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply=SURROGATE_CALL, context_length=4096)])
async def test_a_lone_surrogate_escape_in_a_call_is_no_500(claude: AsyncAnthropic) -> None:
    """The model wrote `\\ud800` in a call's JSON: the block's input holds U+FFFD, not a lone
    surrogate that the response cannot be encoded with."""
    message = await claude.messages.create(
        model="fake",
        max_tokens=200,
        messages=HELLO,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("tool_use", {"city": "\ufffd"})
    ]


STRING_ARGUMENTS_CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>'
)


async def assert_one_paris_call(claude: AsyncAnthropic, fields: dict[str, Any]) -> None:
    """Created and streamed alike: one tool_use block, get_weather's input {"city": "Paris"}."""
    message = await claude.messages.create(model="fake", messages=HELLO, **fields)
    streamed = await final_streamed(claude, **fields)
    for reply in (message, streamed):
        assert reply.stop_reason == "tool_use"
        assert [(b.type, getattr(b, "input", None)) for b in reply.content] == [
            ("tool_use", {"city": "Paris"})
        ]


@pytest.mark.parametrize(
    "fake_engine", [FakeEngine(reply=STRING_ARGUMENTS_CALL, context_length=4096)]
)
async def test_a_call_whose_arguments_are_a_json_string_streams_its_input(
    claude: AsyncAnthropic,
) -> None:
    """Models often write a call's arguments as a JSON string. The block's input is the object
    it holds, streamed or not: streamed as written, the SDK's stream helper raised on the
    input_json_delta ('Unable to parse tool parameter JSON')."""
    fields: dict[str, Any] = {"max_tokens": 200, "tools": [WEATHER]}
    await assert_one_paris_call(claude, fields)


@pytest.mark.parametrize(
    "fake_engine",
    [FakeEngine(reply=CALL + "\n" + CALL.replace("Paris", "Rome"), context_length=4096)],
)
async def test_disable_parallel_tool_use_is_one_call_under_auto(claude: AsyncAnthropic) -> None:
    """`disable_parallel_tool_use` is at most one tool_use block, also under `auto` (no grammar
    forces the call): a second call the model wrote is left out, streamed or not."""
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    fields: dict[str, Any] = {"max_tokens": 300, "tools": [WEATHER], "tool_choice": choice}
    await assert_one_paris_call(claude, fields)


async def test_tool_names_up_to_128_characters_are_taken(
    claude: AsyncAnthropic, fake_engine: FakeEngine, http: httpx.AsyncClient
) -> None:
    """Anthropic's tool names are `^[a-zA-Z0-9_-]{1,128}$`: Claude Code names an MCP server's
    tools `mcp__<server>__<tool>`, often past OpenAI's 64, and a 400 for one failed every request
    of the session. Longer is still a 400 naming the tool."""
    name = "mcp__" + "s" * 60 + "__" + "t" * 61  # 128
    tool = {**WEATHER, "name": name}
    await claude.messages.create(model="fake", max_tokens=10, messages=HELLO, tools=[tool])  # type: ignore[list-item]
    assert [t["function"]["name"] for t in fake_engine.tools_seen or []] == [name]
    longer = messages_body(tools=[{**WEATHER, "name": name + "x"}])
    message = assert_anthropic_error(
        await http.post(URL, json=longer), 400, "invalid_request_error"
    )
    assert "'tools[0].name'" in message


async def test_a_final_assistant_message_is_a_prefill_the_reply_continues(
    claude: AsyncAnthropic, fake_engine: FakeEngine
) -> None:
    turns: Any = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Bonjour"}]
    message = await claude.messages.create(model="fake", max_tokens=10, messages=turns)
    assert fake_engine.template_kwargs_seen == {CONTINUE_FINAL: True}
    assert message.content[0].type == "text"  # the continuation alone, as Anthropic answers
    opened: Any = [{"role": "user", "content": "hi"}]
    await claude.messages.create(model="fake", max_tokens=10, messages=opened)
    assert fake_engine.template_kwargs_seen == {}


async def test_a_prefill_ending_in_whitespace_is_refused(http: httpx.AsyncClient) -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Bonjour "}]
    response = await http.post(URL, json=messages_body(messages=turns))
    message = assert_anthropic_error(response, 400, "invalid_request_error")
    assert message.endswith("final assistant content cannot end with trailing whitespace")


async def test_an_image_in_a_tool_result_is_a_placeholder_not_a_400(
    claude: AsyncAnthropic, fake_engine: FakeEngine
) -> None:
    """Claude Code's Read tool returns screenshots as tool-result images: refused, that block
    would fail every later request of the session. The model reads a placeholder instead."""
    png = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/"
        "iZk9HQAAAABJRU5ErkJggg=="
    )
    await claude.messages.create(
        model="fake",
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "look"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "screenshot:"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": png}},
                ]},
            ]},
        ],
    )  # fmt: skip
    assert prompt_of(fake_engine).endswith(f"<tool>screenshot:\n{TOOL_IMAGE_TEXT}")


@pytest.mark.parametrize("path", [URL, f"{URL}/count_tokens"])
async def test_only_an_empty_system_message_is_a_400(http: httpx.AsyncClient, path: str) -> None:
    """It makes no chat message at all (found by schemathesis: a 500 from the prefill check)."""
    body = {"model": "fake", "max_tokens": 8, "messages": [{"role": "system", "content": ""}]}
    assert_anthropic_error(await http.post(path, json=body), 400, "invalid_request_error")


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply=CUT, context_length=4096)], ids=["cut"])
async def test_a_call_cut_by_the_end_of_sequence_is_no_tool_use(claude: AsyncAnthropic) -> None:
    """The model's end of sequence met inside a call's arguments: no `tool_use` stop (which
    agents answer by running the call, here on `{}`), `end_turn`, as the chat route's `stop`."""
    fields: dict[str, Any] = {"max_tokens": 100, "tools": [WEATHER]}
    message = await claude.messages.create(model="fake", messages=HELLO, **fields)
    streamed = await final_streamed(claude, **fields)
    for reply in (message, streamed):
        assert reply.stop_reason == "end_turn" and reply.stop_sequence is None
        assert [(b.type, getattr(b, "input", None)) for b in reply.content] == [("tool_use", {})]


CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


async def test_the_beta_output_format_is_output_config_format(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """Clients written for the structured-outputs beta send `output_format`: the same grammar
    as `output_config.format`, not free text; both at once is a 400."""
    body: dict[str, Any] = {
        "model": "fake",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Where?"}],
    }
    fmt = {"type": "json_schema", "schema": CITY}
    for extra in ({"output_config": {"format": fmt}}, {"output_format": fmt}):
        response = await http.post(URL, json={**body, **extra})
        assert response.status_code == 200, response.text
        assert "x-mlxd-ignored-fields" not in response.headers
    beta, current = fake_engine.requests[-1].grammar, fake_engine.requests[-2].grammar
    assert beta is not None and beta == current
    both = {**body, "output_format": fmt, "output_config": {"format": fmt}}
    assert_anthropic_error(await http.post(URL, json=both), 400, "invalid_request_error")


AFTER = f"Let me check.{CALL}\nThat is all."  # a text after the call


@pytest.mark.parametrize(
    "fake_engine", [FakeEngine(reply=AFTER, context_length=4096)], ids=["after"]
)
async def test_a_text_after_a_call_is_a_block_after_it_streamed_or_not(
    claude: AsyncAnthropic,
) -> None:
    """Blocks in the order the model wrote them, the same streamed (a character at a time)
    and not (the whole output at once), as the chat route's deltas."""
    fields: dict[str, Any] = {"max_tokens": 200, "tools": [WEATHER]}
    message = await claude.messages.create(model="fake", messages=HELLO, **fields)
    streamed = await final_streamed(claude, **fields)
    for reply in (message, streamed):
        blocks = [
            (b.type, getattr(b, "text", None) or getattr(b, "input", None)) for b in reply.content
        ]
        assert blocks == [
            ("text", "Let me check."),
            ("tool_use", {"city": "Paris"}),
            ("text", "\nThat is all."),
        ]
