"""The HTTP contract of /v1/chat/completions, /v1/models and /health, on a scripted fake engine."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from engines.errors import KVBudgetExceeded, NoChatTemplate, Overloaded
from engines.pool import EnginePool
from server.app import create_app
from server.chat_pipeline import template_inputs
from server.schemas.chat import ChatCompletionRequest
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import HELLO, URL, assert_openai_error, chat_body


async def test_non_streamed_completion_through_strict_sdk(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="fake", messages=HELLO)  # type: ignore[arg-type]
    choice = completion.choices[0]
    assert choice.message.content == "Hello there!"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len("Hello there!")
    assert completion.usage.prompt_tokens == len("<user>hi")
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + len("Hello there!")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_truncates_with_length(client: AsyncOpenAI, field: str) -> None:
    completion = await client.chat.completions.create(
        model="fake",
        messages=HELLO,  # type: ignore[arg-type]
        **{field: 5},  # type: ignore[arg-type]
    )
    assert completion.choices[0].message.content == "Hello"
    assert completion.choices[0].finish_reason == "length"


async def test_streamed_completion_with_usage_through_strict_sdk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake",
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there!"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1


async def test_sse_framing_and_done(http: httpx.AsyncClient) -> None:
    response = await http.post(URL, json=chat_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert "usage" not in payloads[0]  # only with stream_options.include_usage


async def test_stream_without_usage_has_no_usage_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="fake", messages=HELLO, stream=True)  # type: ignore[arg-type]
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)


BAD_BODIES = [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b"", None),
    (b'"a string"', None),
    (b'{"model": "fake", "messages": [], "temperature": NaN}', None),
    (json.dumps({"model": "fake"}).encode(), "messages"),
    (json.dumps({"messages": HELLO}).encode(), "model"),
    (json.dumps(chat_body(messages=[])).encode(), "messages"),
    (json.dumps(chat_body(messages="hi")).encode(), "messages"),
    (
        json.dumps(chat_body(messages=[{"role": "wizard", "content": "x"}])).encode(),
        "messages[0].role",
    ),
    (json.dumps(chat_body(messages=[{"content": "x"}])).encode(), "messages[0].role"),
    (
        json.dumps(chat_body(messages=[{"role": "user", "content": 5}])).encode(),
        "messages[0].content",
    ),
    (
        json.dumps(chat_body(messages=[{"role": "tool", "content": "42"}])).encode(),
        "messages[0].tool_call_id",
    ),
    (
        json.dumps(
            chat_body(messages=[{"role": "tool", "content": "42", "tool_call_id": None}])
        ).encode(),
        "messages[0].tool_call_id",
    ),
    (json.dumps(chat_body(temperature="0.5")).encode(), "temperature"),
    (json.dumps(chat_body(temperature=2.5)).encode(), "temperature"),
    (json.dumps(chat_body(temperature=-1)).encode(), "temperature"),
    (json.dumps(chat_body(top_p=0)).encode(), "top_p"),
    (json.dumps(chat_body(top_p=1.5)).encode(), "top_p"),
    (json.dumps(chat_body(top_k=-1)).encode(), "top_k"),
    (json.dumps(chat_body(min_p=2)).encode(), "min_p"),
    (json.dumps(chat_body(max_tokens=0)).encode(), "max_tokens"),
    (json.dumps(chat_body(max_tokens=True)).encode(), "max_tokens"),
    (json.dumps(chat_body(max_completion_tokens=-5)).encode(), "max_completion_tokens"),
    (json.dumps(chat_body(stream="yes")).encode(), "stream"),
    (json.dumps(chat_body(seed="1")).encode(), "seed"),
    (json.dumps(chat_body(stop=5)).encode(), "stop"),
    (json.dumps(chat_body(stop=["a", ""])).encode(), "stop"),
    (json.dumps(chat_body(stop=["a", "b", "c", "d", "e"])).encode(), "stop"),
    (json.dumps(chat_body(stop="x" * 1025)).encode(), "stop"),
    (json.dumps(chat_body(n=0)).encode(), "n"),
    (json.dumps(chat_body(n=17)).encode(), "n"),
    (json.dumps(chat_body(logprobs="yes")).encode(), "logprobs"),
    (json.dumps(chat_body(logprobs=True, top_logprobs=21)).encode(), "top_logprobs"),
    (json.dumps(chat_body(top_logprobs=2)).encode(), "top_logprobs"),
    (json.dumps(chat_body(presence_penalty=2.5)).encode(), "presence_penalty"),
    (json.dumps(chat_body(frequency_penalty=-3)).encode(), "frequency_penalty"),
    (json.dumps(chat_body(repetition_penalty=0)).encode(), "repetition_penalty"),
    (json.dumps(chat_body(logit_bias={"abc": 1})).encode(), "logit_bias"),
    (json.dumps(chat_body(logit_bias={"5": 101})).encode(), "logit_bias"),
    (json.dumps(chat_body(logit_bias={"5": "1"})).encode(), "logit_bias.5"),
    (
        json.dumps(chat_body(stream_options={"include_usage": "yes"})).encode(),
        "stream_options.include_usage",
    ),
]


@pytest.mark.parametrize(("raw", "param"), BAD_BODIES)
async def test_bad_input_is_a_400_with_param(
    http: httpx.AsyncClient, raw: bytes, param: str | None
) -> None:
    response = await http.post(URL, content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, param)


async def test_invalid_utf8_is_a_400(http: httpx.AsyncClient) -> None:
    raw = b'{"model": "fake", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    error = assert_openai_error(await http.post(URL, content=raw), 400)
    assert "UTF-8" in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("functions", [{"name": "f"}]),
        ("audio", {"voice": "alloy", "format": "wav"}),
    ],
)
async def test_unsupported_fields_are_refused_not_dropped(
    http: httpx.AsyncClient, field: str, value: Any
) -> None:
    response = await http.post(URL, json=chat_body(**{field: value}))
    assert_openai_error(response, 400, field, "unsupported_parameter")


async def test_ignored_fields_are_reported_in_a_header(http: httpx.AsyncClient) -> None:
    response = await http.post(URL, json=chat_body(user="u1", metadata={"a": "b"}, vendor_x=1))
    assert response.status_code == 200
    assert response.headers["x-mlxd-ignored-fields"] == "user,metadata,vendor_x"
    plain = await http.post(URL, json=chat_body(temperature=0))
    assert "x-mlxd-ignored-fields" not in plain.headers


async def test_unknown_model_is_404_model_not_found(http: httpx.AsyncClient) -> None:
    response = await http.post(URL, json=chat_body(model="nope"))
    assert_openai_error(response, 404, "model", "model_not_found")


@pytest.mark.parametrize("stream", [False, True])
async def test_prompt_over_context_is_a_plain_400_even_when_streaming(
    http: httpx.AsyncClient, stream: bool
) -> None:
    long = [{"role": "user", "content": "x" * 100}]  # the fake's context is 64 tokens
    response = await http.post(URL, json=chat_body(messages=long, stream=stream))
    error = assert_openai_error(response, 400, "messages", "context_length_exceeded")
    assert "maximum context length" in error["message"]
    assert not response.headers["content-type"].startswith("text/event-stream")


async def test_prompt_plus_max_tokens_over_context_names_max_tokens(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(URL, json=chat_body(max_tokens=60))
    assert_openai_error(response, 400, "max_tokens", "context_length_exceeded")


async def test_wrong_method_is_405_and_unknown_route_404(http: httpx.AsyncClient) -> None:
    assert_openai_error(await http.get(URL), 405, code="method_not_allowed")
    assert_openai_error(await http.post("/v1/nothing", json={}), 404, code="not_found")


async def test_body_over_limit_is_413(http: httpx.AsyncClient) -> None:
    huge = chat_body(messages=[{"role": "user", "content": "x" * 70_000}])
    response = await http.post(URL, json=huge)
    assert_openai_error(response, 413, code="body_too_large")


async def test_body_over_limit_without_content_length_is_413(http: httpx.AsyncClient) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 8192

    response = await http.post(URL, content=chunks())
    assert_openai_error(response, 413, code="body_too_large")


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply="abcdefgh", fail_after=3)])
async def test_engine_failure_mid_stream_is_an_error_event_then_done(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(URL, json=chat_body(stream=True))
    assert response.status_code == 200
    events = [e for e in response.text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "scripted failure" in error["message"]
    text = "".join(
        json.loads(e.removeprefix("data: "))["choices"][0]["delta"].get("content", "")
        for e in events[:-2]
    )
    assert text == "abc"


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply="abcdefgh", fail_after=3)])
async def test_engine_failure_without_stream_is_openai_shaped(http: httpx.AsyncClient) -> None:
    response = await http.post(URL, json=chat_body())
    assert_openai_error(response, 500, code="engine_failed")


async def test_sampling_fields_reach_the_engine(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    body = chat_body(
        temperature=0.3,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        seed=11,
        stop=["!", "x"],
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        repetition_penalty=1.1,
        logit_bias={"5": -100, "7": 2.5},
    )
    assert (await http.post(URL, json=body)).status_code == 200
    request = fake_engine.requests[-1]
    assert request.sampling.presence_penalty == 0.5
    assert request.sampling.frequency_penalty == -0.25
    assert request.sampling.repetition_penalty == 1.1
    assert request.sampling.logit_bias == ((5, -100.0), (7, 2.5))
    assert request.sampling.temperature == 0.3
    assert request.sampling.top_p == 0.9
    assert request.sampling.top_k == 40
    assert request.sampling.min_p == 0.05
    assert request.sampling.seed == 11
    assert request.stop == ("!", "x")
    assert request.max_tokens == 64 - len("<user>hi")


async def test_content_parts_are_accepted(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    )
    assert completion.choices[0].message.content == "Hello there!"


async def test_models_list_and_retrieve(client: AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["fake", "fake-whisper"]
    model = await client.models.retrieve("fake")
    assert model.id == "fake" and model.owned_by == "mlxd"


async def test_models_show_a_chat_models_context_window(http: httpx.AsyncClient) -> None:
    """Agents size their history by it; speech models have none."""
    listed = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
    assert listed["fake"]["context_window"] == 64
    assert "context_window" not in listed["fake-whisper"]


async def test_retrieve_unknown_model_is_404(http: httpx.AsyncClient) -> None:
    assert_openai_error(await http.get("/v1/models/org/none"), 404, "model", "model_not_found")


async def test_health(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["models"], body["active"]) == ("ok", ["fake", "fake-whisper"], 0)
    assert body["engines"]["fake"]["queued"] == 0


async def test_n_choices_non_streamed(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="fake", messages=HELLO, n=3)  # type: ignore[arg-type]
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content == "Hello there!" for c in completion.choices)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3 * 12
    assert completion.usage.prompt_tokens == len("<user>hi")


async def test_n_choices_streamed_interleaved_by_index(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake",
        messages=HELLO,  # type: ignore[arg-type]
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    texts = {0: "", 1: ""}
    order = []
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.delta.content:
                order.append(choice.index)
    assert texts == {0: "Hello there!", 1: "Hello there!"}
    assert order[:4] == [0, 1, 0, 1]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24


async def test_logprobs_shape_through_strict_sdk(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="fake",
        messages=HELLO,  # type: ignore[arg-type]
        logprobs=True,
        top_logprobs=2,
        max_tokens=5,
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert "".join(t.token for t in logprobs.content) == "Hello"
    first = logprobs.content[0]
    assert first.logprob == -0.5 and first.bytes == list(b"H")
    assert [t.token for t in first.top_logprobs] == ["x", "y"]


async def test_logprobs_streamed_through_strict_sdk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake",
        messages=HELLO,  # type: ignore[arg-type]
        logprobs=True,
        stream=True,
        max_tokens=4,
    )
    tokens = [
        t.token
        async for c in stream
        for choice in c.choices
        if choice.logprobs and choice.logprobs.content
        for t in choice.logprobs.content
    ]
    assert "".join(tokens) == "Hell"


async def test_without_logprobs_the_field_is_null(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="fake", messages=HELLO)  # type: ignore[arg-type]
    assert completion.choices[0].logprobs is None


@pytest.mark.parametrize("fake_engine", [FakeEngine(refuse_with=Overloaded("queue full", 2))])
@pytest.mark.parametrize("stream", [False, True])
async def test_full_queue_is_429_with_retry_after(http: httpx.AsyncClient, stream: bool) -> None:
    response = await http.post(URL, json=chat_body(stream=stream))
    error = assert_openai_error(response, 429, code="overloaded")
    assert error["type"] == "rate_limit_error"
    assert response.headers["retry-after"] == "2"


@pytest.mark.parametrize(
    "fake_engine", [FakeEngine(refuse_with=KVBudgetExceeded("needs 9 GiB", param="max_tokens"))]
)
async def test_never_fitting_request_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post(URL, json=chat_body())
    assert_openai_error(response, 400, "max_tokens", "kv_budget_exceeded")


@pytest.mark.parametrize("fake_engine", [FakeEngine(reply="abcdefgh", fail_after=3)])
async def test_engine_failure_tells_the_sdk_not_to_retry(http: httpx.AsyncClient) -> None:
    response = await http.post(URL, json=chat_body())
    assert response.status_code == 500
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "fake", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}',
        b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], "stop": ["\\uDFFF"]}',
    ],
)
async def test_lone_surrogates_are_a_400(http: httpx.AsyncClient, raw: bytes) -> None:
    error = assert_openai_error(await http.post(URL, content=raw), 400)
    assert "surrogate" in error["message"]


async def test_escaped_surrogate_pairs_are_fine(http: httpx.AsyncClient) -> None:
    raw = b'{"model": "fake", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert (await http.post(URL, content=raw)).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
async def test_request_id_header_is_the_completion_id(
    http: httpx.AsyncClient, stream: bool
) -> None:
    response = await http.post(URL, json=chat_body(stream=stream))
    text = response.text.split("\n", 1)[0].removeprefix("data: ") if stream else response.text
    assert response.headers["x-request-id"] == json.loads(text)["id"]


async def test_unknown_field_names_are_reported_safely(http: httpx.AsyncClient) -> None:
    """Field names become header text: non-ASCII, control characters and commas are escaped."""
    response = await http.post(URL, json=chat_body(**{"ré\U000d2557": 1, "a,b\n": 2}))
    assert response.status_code == 200
    assert response.headers["x-mlxd-ignored-fields"] == "r\\xe9\\U000d2557,a\\x2cb\\x0a"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"x" * 50_000: 1}, "x" * 61 + "..."),  # one long name
        ({f"field_{i:04}": i for i in range(2000)}, None),  # many names
    ],
)
async def test_the_ignored_fields_header_stays_small(
    http: httpx.AsyncClient, fields: dict[str, int], expected: str | None
) -> None:
    """The header grows with what the client sent: names are cut to 64 characters and the list
    to 1 KiB, ending with how many more there were. Uncapped, a request with a long unknown key
    got a response whose headers curl (100 KiB), h11 (64 KiB) and proxies (nginx: 4-8 KiB) refuse
    to read."""
    response = await http.post(URL, json=chat_body(**fields))
    assert response.status_code == 200, response.text
    header = response.headers["x-mlxd-ignored-fields"]
    assert len(header) <= 1024
    if expected is not None:
        assert header == expected
    else:
        named = header.split(",")
        assert named[:-1] == list(fields)[: len(named) - 1]
        assert named[-1] == f"+{len(fields) - len(named) + 1} more"


async def test_405_allows_every_method_of_the_resource(http: httpx.AsyncClient) -> None:
    """GET and DELETE of a stored response are two routes; Allow names both, and HEAD."""
    response = await http.put("/v1/responses/resp_x")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD"
    assert_openai_error(response, 405, None, "method_not_allowed")


async def test_a_model_without_chat_template_points_to_completions() -> None:
    """The engine says what is wrong; the edge says what to do instead (engines know no URLs)."""

    class NoTemplate(FakeEngine):
        def encode_chat(self, *args: Any, **kwargs: Any) -> list[int]:
            raise NoChatTemplate()

    app = create_app(Settings(), EnginePool([NoTemplate()]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        error = assert_openai_error(await http.post(URL, json=chat_body()), 400, "messages")
    hint = "use /v1/completions with a plain prompt"
    assert error["message"] == f"this model has no chat template; {hint}"


@pytest.mark.parametrize("fake_engine", [FakeEngine(name="\x00slot\x00")])
async def test_stream_when_the_model_name_is_the_frame_slot(http: httpx.AsyncClient) -> None:
    """Content frames come from a template with a slot marker (server/sse.py); a model named
    as the marker gets whole frames instead, with the same content."""
    response = await http.post(URL, json=chat_body(model="\x00slot\x00", stream=True))
    events = [e for e in response.text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {p["model"] for p in payloads} == {"\x00slot\x00"}
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads) == "Hello there!"


async def test_an_assistant_refusal_part_is_the_assistants_text(http: httpx.AsyncClient) -> None:
    """An assistant message replayed with a `refusal` part (the spec's assistant content parts
    are `text` and `refusal`) is accepted, and reaches the template as what the assistant said."""
    refused = {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}
    messages = [*HELLO, refused, {"role": "user", "content": "ok"}]
    response = await http.post(URL, json=chat_body(messages=messages))
    assert response.status_code == 200, response.text
    chat = ChatCompletionRequest.model_validate(chat_body(messages=messages))
    assert template_inputs(chat)[1][1]["content"] == [{"type": "text", "text": "No."}]


@pytest.mark.parametrize(
    ("part", "named"),
    [
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            "'input_audio'",
        ),
        ({"type": "file", "file": {"file_id": "file-1"}}, "'file'"),
        ({"text": "no type"}, "no type"),
        (3, "not an object"),
    ],
)
async def test_content_parts_this_server_cannot_read_are_named(
    http: httpx.AsyncClient, part: Any, named: str
) -> None:
    """Not pydantic's "Input should be a valid string" (the first branch of `str | parts`): the
    part, and what it is, are named, with the part types this server reads."""
    text = {"type": "text", "text": "see"}
    body = chat_body(messages=[{"role": "user", "content": [text, part]}])
    error = assert_openai_error(await http.post(URL, json=body), 400, "messages[0].content")
    message = error["message"]
    assert message.startswith("Invalid value for 'messages[0].content': content[1] "), message
    assert named in message and "valid string" not in message
    assert "'text', 'image_url'" in message


async def test_a_refusal_part_without_text_says_so(http: httpx.AsyncClient) -> None:
    refused = {"role": "assistant", "content": [{"type": "refusal", "refusal": 3}]}
    body = chat_body(messages=[*HELLO, refused, {"role": "user", "content": "ok"}])
    error = assert_openai_error(await http.post(URL, json=body), 400, "messages[1].content")
    assert error["message"].endswith("content[0].refusal should be a string")


@pytest.mark.parametrize(
    ("predicted", "accepted"),
    [("Hello there!", 12), ("Hello world, how are you?", 6)],
    ids=["right", "partly"],
)
async def test_a_prediction_reaches_the_engine_and_usage_counts_it(
    client: AsyncOpenAI, fake_engine: FakeEngine, predicted: str, accepted: int
) -> None:
    """Predicted Outputs: the prediction's tokens go to the engine (its drafter looks there
    first); usage says how many were kept and how many not, streamed or not."""
    prediction = {"type": "content", "content": [{"type": "text", "text": predicted}]}
    completion = await client.chat.completions.create(
        model="fake",
        messages=HELLO,  # type: ignore[arg-type]
        prediction=prediction,  # type: ignore[arg-type]
    )
    assert fake_engine.requests[-1].prediction == tuple(ord(c) for c in predicted)
    stream = await client.chat.completions.create(
        model="fake",
        messages=HELLO,  # type: ignore[arg-type]
        prediction=prediction,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    last = [chunk async for chunk in stream][-1]
    for usage in (completion.usage, last.usage):
        assert usage is not None and usage.completion_tokens_details is not None
        details = usage.completion_tokens_details
        assert details.accepted_prediction_tokens == accepted
        assert details.rejected_prediction_tokens == len(predicted) - accepted
    plain = await client.chat.completions.create(model="fake", messages=HELLO)  # type: ignore[arg-type]
    assert plain.usage is not None and plain.usage.completion_tokens_details is not None
    assert plain.usage.completion_tokens_details.accepted_prediction_tokens is None


async def test_a_prediction_of_another_type_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post(URL, json=chat_body(prediction={"type": "diff", "content": "x"}))
    assert_openai_error(response, 400, "prediction.type")
