"""`/v1/responses` on a scripted engine, through the strict OpenAI SDK and raw HTTP: the items and
events a client assembles, what reaches the engine (messages, tools, grammars, template switches),
the stored conversation behind `previous_response_id`, and the 4xx shapes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, NotFoundError

from engines.pool import EnginePool
from server.app import create_app
from server.images import TOOL_IMAGE_TEXT
from server.response_store_items import listed
from server.schemas.responses import parse_items
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import assert_openai_error, responses_events
from tests.servers import serve, wait_until

URL = "/v1/responses"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(context_length=4096)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, max_body_bytes=1 << 20)


def prompt_of(engine: FakeEngine) -> str:
    return engine.decode(engine.requests[-1].prompt_tokens)


async def test_create_through_strict_sdk(client: AsyncOpenAI, fake_engine: FakeEngine) -> None:
    response = await client.responses.create(
        model="fake", instructions="Be brief.", input="hi", max_output_tokens=100
    )
    assert response.status == "completed"
    assert response.output_text == "Hello there!"
    assert response.id.startswith("resp_")
    message = response.output[0]
    assert message.type == "message" and message.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens == len(fake_engine.requests[-1].prompt_tokens)
    assert response.usage.output_tokens == len("Hello there!")
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert prompt_of(fake_engine) == "<system>Be brief.<user>hi"
    assert fake_engine.requests[-1].max_tokens == 100


async def test_stream_helper_assembles_the_response(client: AsyncOpenAI) -> None:
    async with client.responses.stream(model="fake", input="hi") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "Hello there!"
    assert final.output_text == "Hello there!"
    assert final.status == "completed"


async def test_stream_event_sequence(http: httpx.AsyncClient) -> None:
    events = await responses_events(http, {"model": "fake", "input": "hi", "stream": True})
    kinds = [e["type"] for e in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert len({e["response"]["id"] for e in events if "response" in e}) == 1
    assert events[-2]["item"]["content"][0]["text"] == "Hello there!"


async def test_a_long_prefill_repeats_in_progress(
    client: AsyncOpenAI, http: httpx.AsyncClient, fake_engine: FakeEngine, settings: Settings
) -> None:
    """Codex's idle timeout counts events, not SSE comments: a stream that has nothing to say
    for `keepalive_interval_s` repeats `response.in_progress`."""
    settings.keepalive_interval_s = 0.05
    fake_engine.prefill_delay_s = 0.3
    events = await responses_events(http, {"model": "fake", "input": "hi", "stream": True})
    kinds = [e["type"] for e in events]
    first_item = kinds.index("response.output_item.added")
    assert kinds[0] == "response.created"
    assert kinds[1:first_item] == ["response.in_progress"] * (first_item - 1)
    assert first_item >= 4  # at least two repeats during the 0.3 s "prefill"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    async with client.responses.stream(model="fake", input="hi") as stream:
        final = await stream.get_final_response()  # the strict helper accepts the repeats
    assert final.output_text == "Hello there!"


async def test_a_tool_call_round_trip(client: AsyncOpenAI, fake_engine: FakeEngine) -> None:
    fake_engine.reply = CALL
    first = await client.responses.create(model="fake", input="weather?", tools=[WEATHER])  # type: ignore[list-item]
    [call] = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert fake_engine.tools_seen is not None
    assert fake_engine.tools_seen[0]["function"]["name"] == "get_weather"
    fake_engine.reply = "It is sunny."
    second = await client.responses.create(
        model="fake",
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )  # fmt: skip
    assert second.output_text == "It is sunny."
    assert prompt_of(fake_engine).endswith("<user>weather?<assistant><tool>sunny")


async def test_streamed_tool_call_events(http: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    fake_engine.reply = CALL
    body = {"model": "fake", "input": "weather?", "tools": [WEATHER], "stream": True}
    events = await responses_events(http, body)
    kinds = [e["type"] for e in events]
    assert "response.output_text.delta" not in kinds  # the markup's whitespace opens no message
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["item"]["type"] == "function_call" and added["item"]["name"] == "get_weather"
    arguments = "".join(
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    )
    assert json.loads(arguments) == {"city": "Paris"}
    # It named no function: strict clients whose type requires `name` (openai-python 3.3, which
    # pip picks beside instructor) failed on the event.
    [done] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["name"] == "get_weather" and done["arguments"] == arguments
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["arguments"] == arguments


@pytest.mark.parametrize(("mode", "forced"), [("required", True), ("auto", False)])
async def test_allowed_tools_narrow_what_the_model_is_offered(
    client: AsyncOpenAI, fake_engine: FakeEngine, mode: str, forced: bool
) -> None:
    """The spec's `allowed_tools` choice: the model is offered that subset of `tools` (hosted
    tools listed are not run here), `required` forcing a call among it; the response echoes the
    choice. It was a 400 saying tool_choice should be 'none', 'auto' or 'required'."""
    clock = {**WEATHER, "name": "get_time"}
    response = await client.responses.create(
        model="fake",
        input="time?",
        tools=[WEATHER, clock, {"type": "web_search"}],  # type: ignore[list-item]
        tool_choice={"type": "allowed_tools", "mode": mode,  # type: ignore[typeddict-item]
                     "tools": [{"type": "function", "name": "get_time"}, {"type": "web_search"}]},
    )  # fmt: skip
    assert [tool["function"]["name"] for tool in fake_engine.tools_seen or []] == ["get_time"]
    grammar = fake_engine.requests[-1].grammar
    assert (grammar is not None) == forced
    if grammar is not None:
        assert "get_time" in grammar and "get_weather" not in grammar
    assert response.tool_choice.type == "allowed_tools"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("tool_choice", "message"),
    [
        ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "x"}]},
         "tool_choice.tools names an unknown function 'x'"),
        ({"type": "web_search_preview"},
         "Invalid value for 'tool_choice': a tool_choice of type 'web_search_preview' is not "
         "supported: it is 'none', 'auto', 'required', a function or allowed_tools (hosted "
         "tools are not run here)"),
    ],
)  # fmt: skip
async def test_tool_choices_this_server_cannot_honour_say_so(
    http: httpx.AsyncClient, tool_choice: dict[str, Any], message: str
) -> None:
    body = {"model": "fake", "input": "hi", "tools": [WEATHER], "tool_choice": tool_choice}
    error = assert_openai_error(await http.post(URL, json=body), 400, "tool_choice")
    assert error["message"] == message


async def test_hosted_tools_are_ignored_and_namespaces_exposed(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    fake_engine.reply = CALL.replace("get_weather", "files.read")
    namespace = {
        "type": "namespace",
        "name": "files",
        "description": "File tools",
        "tools": [{"type": "function", "name": "read", "parameters": {"type": "object"}}],
    }
    response = await client.responses.create(
        model="fake",
        input="read it",
        tools=[{"type": "web_search"}, namespace, WEATHER],  # type: ignore[list-item]
    )
    assert fake_engine.tools_seen is not None
    assert [t["function"]["name"] for t in fake_engine.tools_seen] == ["files.read", "get_weather"]
    [call] = response.output
    assert call.type == "function_call"
    assert (call.namespace, call.name) == ("files", "read")


async def test_max_output_tokens_makes_it_incomplete(
    client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    response = await client.responses.create(model="fake", input="hi", max_output_tokens=5)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Hello"
    body = {"model": "fake", "input": "hi", "max_output_tokens": 5, "stream": True}
    events = await responses_events(http, body)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-2]["item"]["status"] == "incomplete"


async def test_json_schema_format_compiles_a_grammar(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    await client.responses.create(
        model="fake",
        input="city?",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema}},
    )
    assert fake_engine.grammars_checked
    assert fake_engine.requests[-1].grammar is not None


async def test_reasoning_effort_and_reasoning_items(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    assert fake_engine.info is not None
    fake_engine.info = dataclasses.replace(fake_engine.info, reasoning=True)
    fake_engine.reasoning = True  # its template opens the <think> block
    fake_engine.reply = "Paris is in France.</think>Paris."
    response = await client.responses.create(
        model="fake", input="capital?", reasoning={"effort": "low"}
    )
    assert fake_engine.template_kwargs_seen == {"enable_thinking": True, "reasoning_effort": "low"}
    reasoning, _message = response.output
    assert reasoning.type == "reasoning"
    assert reasoning.content is not None
    assert reasoning.content[0].text == "Paris is in France."
    assert response.output_text == "Paris."
    await client.responses.create(model="fake", input="capital?", reasoning={"effort": "none"})
    assert fake_engine.template_kwargs_seen == {
        "enable_thinking": False,
        "reasoning_effort": "none",
    }


async def test_streamed_reasoning_item_through_the_stream_helper(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    assert fake_engine.info is not None
    fake_engine.info = dataclasses.replace(fake_engine.info, reasoning=True)
    fake_engine.reasoning = True
    fake_engine.reply = "Paris is in France.</think>Paris."
    async with client.responses.stream(model="fake", input="capital?") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds.index("response.reasoning_text.delta") < kinds.index("response.output_text.delta")
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "Paris is in France."
    assert message.type == "message" and final.output_text == "Paris."


async def test_previous_response_id_continues_a_stored_conversation(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    first = await client.responses.create(model="fake", instructions="Be brief.", input="hi")
    fetched = await client.responses.retrieve(first.id)
    assert fetched.id == first.id and fetched.output_text == "Hello there!"
    await client.responses.create(model="fake", input="again", previous_response_id=first.id)
    # instructions are not carried over (as OpenAI does); the conversation is
    assert prompt_of(fake_engine) == "<user>hi<assistant>Hello there!<user>again"
    await client.responses.delete(first.id)
    with pytest.raises(NotFoundError):
        await client.responses.retrieve(first.id)


async def test_streamed_response_is_stored_before_it_completes(
    client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    events = await responses_events(http, {"model": "fake", "input": "hi", "stream": True})
    stored = await client.responses.retrieve(events[-1]["response"]["id"])
    assert stored.output_text == "Hello there!"


async def test_unknown_and_unstored_ids_are_404(http: httpx.AsyncClient) -> None:
    assert_openai_error(await http.get(f"{URL}/resp_nope"), 404, "response_id")
    assert_openai_error(await http.delete(f"{URL}/resp_nope"), 404, "response_id")
    body = {"model": "fake", "input": "hi", "previous_response_id": "resp_nope"}
    assert_openai_error(await http.post(URL, json=body), 404, "previous_response_id")
    unstored = (await http.post(URL, json={"model": "fake", "input": "hi", "store": False})).json()
    assert_openai_error(await http.get(f"{URL}/{unstored['id']}"), 404, "response_id")


async def test_input_items_list_the_whole_conversation(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    """Through the strict SDK's `input_items.list`: a response continuing another lists the first
    one's input and output, then its own input, newest first by default; ids stay the same."""
    first = await client.responses.create(
        model="fake", input=[{"role": "developer", "content": "Be brief."}, {"role": "user",
                              "content": [{"type": "input_text", "text": "hi"}]}],
    )  # fmt: skip
    first_items = (await client.responses.input_items.list(first.id, order="asc")).data
    assert [(i.type, getattr(i, "role", None)) for i in first_items] == [
        ("message", "developer"),
        ("message", "user"),
    ]
    fake_engine.reply = CALL
    second = await client.responses.create(
        model="fake",
        input="weather?",
        previous_response_id=first.id,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    [call] = second.output
    assert call.type == "function_call"
    fake_engine.reply = "It is sunny."
    third = await client.responses.create(
        model="fake",
        previous_response_id=second.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    page = await client.responses.input_items.list(third.id)
    kinds = [item.type for item in page.data]
    assert kinds == ["function_call_output", "function_call", "message", "message", "message",
                     "message"]  # fmt: skip
    assert page.has_more is False
    newest, call_item, asked, answer = page.data[:4]
    assert newest.type == "function_call_output" and newest.output == "sunny"
    assert call_item.type == "function_call" and call_item.id == call.id
    assert (
        asked.type == "message" and asked.content[0].type == "input_text"
    )  # a string became a part
    assert answer.type == "message" and answer.role == "assistant"
    assert answer.content[0].type == "output_text" and answer.content[0].text == "Hello there!"
    assert answer.id == first.output[0].id
    assert [i.id for i in page.data[-2:]] == [i.id for i in reversed(first_items)]


async def test_input_items_pagination(client: AsyncOpenAI, http: httpx.AsyncClient) -> None:
    words = [f"w{n}" for n in range(5)]
    created = await client.responses.create(
        model="fake", input=[{"role": "user", "content": word} for word in words]
    )
    paged = [
        item async for item in client.responses.input_items.list(created.id, limit=2, order="asc")
    ]
    assert [item.content[0].text for item in paged if item.type == "message"] == words  # type: ignore[union-attr]
    ids = [item.id for item in paged]
    assert len(set(ids)) == 5
    listing = f"{URL}/{created.id}/input_items"
    page = (await http.get(listing, params={"limit": 2, "after": ids[3]})).json()
    assert [i["id"] for i in page["data"]] == [ids[2], ids[1]] and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[2], ids[1])
    page = (await http.get(listing, params={"limit": 2, "order": "asc", "before": ids[4]})).json()
    assert [i["id"] for i in page["data"]] == [ids[2], ids[3]] and page["has_more"] is True
    both = {"order": "asc", "after": ids[0], "before": ids[4]}
    assert [i["id"] for i in (await http.get(listing, params=both)).json()["data"]] == ids[1:4]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": "msg_nope"}, "after"),
        ({"before": "msg_nope"}, "before"),
        ({"include[]": "everything"}, "include"),
    ],
)
async def test_input_items_bad_query_is_a_400(
    client: AsyncOpenAI, http: httpx.AsyncClient, query: dict[str, Any], param: str
) -> None:
    created = await client.responses.create(model="fake", input="hi")
    response = await http.get(f"{URL}/{created.id}/input_items", params=query)
    assert_openai_error(response, 400, param)


async def test_input_items_of_unknown_or_unstored_responses_are_404(
    http: httpx.AsyncClient,
) -> None:
    assert_openai_error(await http.get(f"{URL}/resp_nope/input_items"), 404, "response_id")
    unstored = (await http.post(URL, json={"model": "fake", "input": "hi", "store": False})).json()
    response = await http.get(f"{URL}/{unstored['id']}/input_items")
    assert_openai_error(response, 404, "response_id")


def test_listed_items_show_image_urls_and_encrypted_reasoning_only_when_included() -> None:
    [image_message, reasoning] = parse_items(
        [
            {"id": "msg_1", "role": "user", "content": [
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
            {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "opaque"},
        ]
    )  # fmt: skip
    assert listed(image_message, frozenset())["content"] == [
        {"type": "input_image", "detail": "auto"}
    ]
    urls = listed(image_message, frozenset({"message.input_image.image_url"}))
    assert urls["content"][0]["image_url"] == "data:image/png;base64,AAAA"
    assert "encrypted_content" not in listed(reasoning, frozenset())
    included = listed(reasoning, frozenset({"reasoning.encrypted_content"}))
    assert included["encrypted_content"] == "opaque"


STRING = {"type": "string"}  # a tool's schema not of an object


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "computer_call_output"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
         "input[0].content[0].text"),
        ({"input": [{"role": "user", "content": [{"type": "wat", "text": "x"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
         "input[0].arguments"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": [{}]}]},
         "input[0].output[0].type"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": ["hi"]}, "input[0]"),
        ({"input": []}, "input"),
        ({"input": "hi", "tools": [{"type": "teleport"}]}, "tools[0].type"),
        ({"input": "hi", "tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name"),
        ({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": STRING}]},
         "tools[0].parameters"),
        ({"input": "hi", "tool_choice": "required"}, "tools"),
        ({"input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format.name"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "max_output_tokens": 10**6}, "max_output_tokens"),
        ({"input": "hi", "background": True}, "background"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_400_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    assert_openai_error(await http.post(URL, json={"model": "fake", **body}), 400, param)


async def test_unknown_model_is_a_404(http: httpx.AsyncClient) -> None:
    response = await http.post(URL, json={"model": "nope", "input": "hi"})
    assert_openai_error(response, 404, "model", "model_not_found")


async def test_engine_failure_mid_stream_ends_with_response_failed(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    fake_engine.fail_after = 5
    events = await responses_events(http, {"model": "fake", "input": "hi", "stream": True})
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["output"][0]["content"][0]["text"] == "Hello"  # what was streamed is kept


CODEX = json.loads((Path(__file__).parent / "codex_first_request.json").read_text())


async def test_codexs_first_request(http: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    """Codex's whole first turn: developer messages, function tools, a namespace of functions
    and web_search, `store: false`, `include`, `client_metadata`, no `max_output_tokens`."""
    body = {**CODEX["body"], "model": "fake"}
    assert body["stream"] is True and body["store"] is False and "max_output_tokens" not in body
    async with http.stream("POST", CODEX["path"], json=body, headers=CODEX["headers"]) as response:
        assert response.status_code == 200
        ignored = response.headers["x-mlxd-ignored-fields"].split(",")
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    events = [json.loads(line[6:]) for line in lines]
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done[0]["content"][0]["text"] == "Hello there!"  # what Codex prints
    assert {"include", "prompt_cache_key", "client_metadata", "store"} <= set(ignored)
    assert fake_engine.tools_seen is not None
    offered = [tool["function"]["name"] for tool in fake_engine.tools_seen]
    assert "exec_command" in offered and "multi_agent_v1.spawn_agent" in offered
    assert "web_search" not in offered
    prompt = prompt_of(fake_engine)
    assert prompt.count("<system>") == 1 and prompt.endswith("<user>Say hello in one word.")
    assert fake_engine.requests[-1].max_tokens == 4096 - len(fake_engine.requests[-1].prompt_tokens)


async def test_codexs_tool_follow_up(http: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    """The turn after a call: Codex resends everything plus the call (with its `fc_` id and
    status) and the command's output (an `fco_` id); both reach the template as chat turns."""
    call_id = "call_7268d1fe61e6ae63cd032a35"
    follow_up = [
        {"type": "function_call", "status": "completed",
         "id": "fc_f4de32b6de67426a874995eedc63b043", "name": "exec_command",
         "arguments": '{"cmd": "cat notes.txt"}', "call_id": call_id},
        {"type": "function_call_output", "id": "fco_01a23f55-f390-7d80-b4eb-5d5045a08a90",
         "call_id": call_id,
         "output": "Chunk ID: a6e35e\nWall time: 0.0000 seconds\nProcess exited with code 0\n"
                   "Original token count: 5\nOutput:\nhello from a file\n"},
    ]  # fmt: skip
    body = {**CODEX["body"], "model": "fake", "stream": False}
    body["input"] = [*body["input"], *follow_up]
    response = await http.post(CODEX["path"], json=body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert prompt_of(fake_engine).endswith(
        "<user>Say hello in one word.<assistant><tool>" + follow_up[1]["output"]
    )


async def test_an_image_in_a_function_call_output(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    """A tool's output may hold images (the spec's `input_image` parts; Codex's image viewer and
    MCP screenshots, the Agents SDK's `ToolOutputImage`): refused, the item would fail every
    later request of the session. The model reads a placeholder; the stored item keeps the part."""
    png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="  # noqa: E501
    response = await client.responses.create(
        model="fake",
        input=[
            {"role": "user", "content": "look"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": [
                {"type": "input_text", "text": "screenshot:"},
                {"type": "input_image", "image_url": png, "detail": "low"},
            ]},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )  # fmt: skip
    assert prompt_of(fake_engine).endswith(f"<tool>screenshot:{TOOL_IMAGE_TEXT}")
    [output_item, _, _] = (await client.responses.input_items.list(response.id)).data
    assert output_item.type == "function_call_output"
    assert isinstance(output_item.output, list)
    assert [part.type for part in output_item.output] == ["input_text", "input_image"]


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels(tmp_path: Path, stream: bool) -> None:
    engine = FakeEngine(reply="word " * 200, token_delay_s=0.01, context_length=4096)
    body = {"model": "fake", "input": "go", "stream": stream, "store": False}
    with serve(create_app(Settings(home=tmp_path), EnginePool([engine]))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=0.3) as http:
            if stream:
                async with http.stream("POST", URL, json=body) as response:
                    async for line in response.aiter_lines():
                        if "output_text.delta" in line:
                            break  # leaving the block closes the connection mid-stream
            else:
                with pytest.raises(httpx.ReadTimeout):
                    await http.post(URL, json=body)
        assert await wait_until(lambda: engine.active == 0, timeout=2)
    assert 0 < engine.tokens_generated < 1000


async def test_input_tokens_counts_what_create_would_send(
    client: AsyncOpenAI, http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """`client.responses.input_tokens.count` (strict): the prompt a create request with the same
    body renders, the conversation it continues included; no default model → 400 naming it."""
    first = await client.responses.create(model="fake", input="Hi there", instructions="Be brief.")
    body: dict[str, Any] = {
        "model": "fake",
        "input": "And the weather?",
        "instructions": "Be brief.",
        "previous_response_id": first.id,
        "tools": [WEATHER],
    }
    counted = await client.responses.input_tokens.count(**body)
    assert counted.object == "response.input_tokens"
    created = await client.responses.create(**body)
    assert created.usage is not None
    assert (
        counted.input_tokens
        == created.usage.input_tokens
        == len(fake_engine.requests[-1].prompt_tokens)
    )
    assert counted.input_tokens > (await client.responses.input_tokens.count(
        model="fake", input="And the weather?"
    )).input_tokens  # fmt: skip
    response = await http.post(f"{URL}/input_tokens", json={"input": "hi"})
    assert_openai_error(response, 400, param="model")
    response = await http.post(f"{URL}/input_tokens", json={"model": "fake", "input": 5})
    assert response.status_code == 400


CUT = CALL[: CALL.index("Paris") + 1]  # the call cut inside its arguments: '{"city": "P'


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply=CUT, context_length=4096)], ids=["cut"])
async def test_a_call_cut_by_the_end_of_sequence_is_an_incomplete_item(
    client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    """The end of sequence met inside a call's arguments: the `function_call` item is
    "incomplete" (agents run "completed" calls), streamed and not, as chat's finish `stop`."""
    created = await client.responses.create(model="fake", input="weather?", tools=[WEATHER])  # type: ignore[list-item]
    events = await responses_events(
        http, {"model": "fake", "input": "weather?", "tools": [WEATHER], "stream": True}
    )
    streamed = events[-1]["response"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    for output in (created.model_dump()["output"], streamed["output"], done):
        [call] = output
        assert call["type"] == "function_call" and call["status"] == "incomplete"
        with pytest.raises(ValueError):
            json.loads(call["arguments"])
    assert created.status == streamed["status"] == "completed"


@pytest.mark.parametrize(
    "fake_engine",
    [FakeEngine(reply=f"Let me check.{CALL}\nThat is all.", context_length=4096)],
    ids=["after"],
)
async def test_a_text_after_a_call_is_an_item_after_it_streamed_or_not(
    client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    """Items in the order the model wrote them, the same streamed (a character at a time) and
    not (the whole output at once)."""
    created = await client.responses.create(model="fake", input="weather?", tools=[WEATHER])  # type: ignore[list-item]
    events = await responses_events(
        http, {"model": "fake", "input": "weather?", "tools": [WEATHER], "stream": True}
    )
    for output in (created.model_dump()["output"], events[-1]["response"]["output"]):
        parts = [
            (item["type"], item["arguments"] if item["type"] == "function_call"
             else item["content"][0]["text"])
            for item in output
        ]  # fmt: skip
        assert parts == [
            ("message", "Let me check."),
            ("function_call", '{"city": "Paris"}'),
            ("message", "\nThat is all."),
        ]


def turns(count: int) -> list[dict[str, Any]]:
    """A conversation of `count` turns (one holding a call and its output), after a system
    message; each turn's texts name it."""
    items: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for turn in range(count):
        items.append({"role": "user", "content": f"question {turn} " + "x" * 60})
        if turn == 1:
            items += [
                {"type": "function_call", "call_id": "c1", "name": "get_weather",
                 "arguments": '{"city": "Paris"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny " * 10},
            ]  # fmt: skip
        items.append({"role": "assistant", "content": f"answer {turn} " + "y" * 60})
    return items[:-1]  # ends on the last question


@pytest.mark.parametrize("fake_engine", [FakeEngine(context_length=600)], ids=["600"])
async def test_truncation_auto_drops_the_fewest_oldest_turns(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """A conversation over the context: `disabled` (the default) is a 400; `auto` drops whole
    turns, oldest first, the fewest that make it fit, keeps the system message, and stores
    every item."""
    conversation = turns(8)
    body = {"model": "fake", "input": conversation, "tools": [WEATHER], "max_output_tokens": 16}
    for refused in (body, {**body, "truncation": "disabled"}):
        response = await http.post(URL, json=refused)
        assert_openai_error(response, 400, "input", "context_length_exceeded")
    response = await http.post(URL, json={**body, "truncation": "auto"})
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["truncation"] == "auto" and created["status"] == "completed"
    prompt = prompt_of(fake_engine)
    assert prompt.startswith("<system>Be brief.") and "question 7" in prompt
    first = next(turn for turn in range(8) if f"question {turn}" in prompt)
    assert first > 0 and all(f"question {turn}" in prompt for turn in range(first, 8))
    assert len(prompt) + 16 <= 600 and created["usage"]["input_tokens"] == len(prompt)
    # One turn more would not have fitted.
    start = next(i for i, item in enumerate(conversation) if f"question {first - 1}" in str(item))
    wider = {**body, "input": conversation[:1] + conversation[start:]}
    assert_openai_error(await http.post(URL, json=wider), 400, "input", "context_length_exceeded")
    items = await http.get(f"{URL}/{created['id']}/input_items", params={"limit": 100})
    assert len(items.json()["data"]) == len(conversation)


@pytest.mark.parametrize("fake_engine", [FakeEngine(context_length=80)], ids=["80"])
async def test_truncation_auto_never_drops_the_last_turn(http: httpx.AsyncClient) -> None:
    body = {"model": "fake", "input": turns(3), "truncation": "auto", "max_output_tokens": 16}
    response = await http.post(URL, json=body)
    assert_openai_error(response, 400, "input", "context_length_exceeded")


@pytest.mark.parametrize("fake_engine", [FakeEngine(context_length=600)], ids=["600"])
async def test_input_tokens_counts_the_truncated_conversation_create_would_send(
    http: httpx.AsyncClient,
) -> None:
    """With `truncation: "auto"` the count is of the prompt create sends, its oldest turns
    dropped (it counted every turn: more than the context, and than create's usage); one that
    no truncation makes fit is counted whole, as with `disabled`."""
    body = {"model": "fake", "input": turns(8), "tools": [WEATHER], "max_output_tokens": 16}
    whole = (await http.post(f"{URL}/input_tokens", json=body)).json()["input_tokens"]
    auto = {**body, "truncation": "auto"}
    counted = (await http.post(f"{URL}/input_tokens", json=auto)).json()["input_tokens"]
    created = (await http.post(URL, json=auto)).json()
    assert counted == created["usage"]["input_tokens"] < 600 < whole
    hopeless = {**auto, "max_output_tokens": 600}
    response = await http.post(f"{URL}/input_tokens", json=hopeless)
    assert response.status_code == 200 and response.json()["input_tokens"] == whole
