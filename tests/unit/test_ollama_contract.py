"""Ollama's API (`/api/…`) through the official `ollama` Python client, on scripted fakes: the
model list, show, chat and generate (streamed as NDJSON or whole, tools, formats, options, raw
and fill-in-the-middle prompts, loading), embeddings, and Ollama's `{"error"}` bodies."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama
import pytest

from engines.errors import NoChatTemplate
from engines.pool import EnginePool, ModelSpec
from server.app import create_app
from server.settings import Settings
from tests.fake_embed import FakeEmbedEngine
from tests.fakes import FakeEngine
from tests.servers import serve, wait_until
from tests.unit.test_images_contract import FakeVisionEngine, png

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(context_length=4096, fim_tokens=("<pre>", "<suf>", "<mid>"))


@pytest.fixture
async def app(fake_engine: FakeEngine) -> AsyncIterator[Any]:
    pool = EnginePool([fake_engine, FakeEmbedEngine()])
    await pool.start()
    yield create_app(Settings(max_body_bytes=1 << 20), pool)
    await pool.drain(timeout=1)


@pytest.fixture
def client(app: Any) -> ollama.AsyncClient:
    return ollama.AsyncClient(host="http://127.0.0.1", transport=httpx.ASGITransport(app=app))


@pytest.fixture
async def http(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


def prompt_of(engine: FakeEngine) -> str:
    return engine.decode(engine.requests[-1].prompt_tokens)


async def test_models_are_listed_and_shown(client: ollama.AsyncClient) -> None:
    listed = await client.list()
    assert [m.model for m in listed.models] == ["fake", "fake-embed"]
    shown = await client.show("fake")
    assert set(shown.capabilities or []) == {"completion", "tools", "insert"}
    assert (shown.modelinfo or {})["mlx.context_length"] == 4096
    assert (await client.show("fake-embed")).capabilities == ["embedding"]
    running = await client.ps()
    assert {m.model for m in running.models} == {"fake", "fake-embed"}  # both loaded by now


async def test_chat_whole_and_streamed(client: ollama.AsyncClient) -> None:
    reply = await client.chat(model="fake", messages=HI)
    assert reply.message.content == "Hello there!" and reply.done
    assert reply.done_reason == "stop"
    assert reply.prompt_eval_count == len("<user>hi") and reply.eval_count == 12
    assert reply.total_duration and reply.total_duration >= (reply.eval_duration or 0)
    parts = [part async for part in await client.chat(model="fake", messages=HI, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == "Hello there!"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].eval_count == 12


async def test_options_format_and_think_reach_the_engine(
    client: ollama.AsyncClient, fake_engine: FakeEngine
) -> None:
    options = {"num_predict": 5, "temperature": 0.3, "top_k": 7, "seed": 4, "stop": ["x"],
               "num_ctx": 8192, "num_gpu": 99}  # fmt: skip
    reply = await client.chat(model="fake", messages=HI, options=options)
    assert reply.message.content == "Hello" and reply.done_reason == "length"
    sampling = fake_engine.requests[-1].sampling
    assert (sampling.temperature, sampling.top_k, sampling.seed) == (0.3, 7, 4)
    assert fake_engine.requests[-1].stop == ("x",)
    await client.chat(model="fake", messages=HI, format="json")
    assert fake_engine.requests[-1].grammar is not None
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await client.chat(model="fake", messages=HI, format=schema, think=False)
    assert fake_engine.requests[-1].grammar != fake_engine.requests[-2].grammar
    assert fake_engine.template_kwargs_seen == {"enable_thinking": False}


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_come_whole_and_their_results_go_back(
    client: ollama.AsyncClient, fake_engine: FakeEngine, stream: bool
) -> None:
    fake_engine.reply = f"Let me look.{CALL}"
    answer = await client.chat(model="fake", messages=HI, tools=[WEATHER], stream=stream)
    parts = [part async for part in answer] if stream else [answer]  # type: ignore[union-attr]
    calls = [call for part in parts for call in part.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert "".join(p.message.content or "" for p in parts) == "Let me look."
    assert fake_engine.tools_seen and fake_engine.tools_seen[0]["function"]["name"] == "get_weather"
    fake_engine.reply = "Sunny."
    history = [
        *HI,
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "content": "18 degrees, sun", "tool_name": "get_weather"},
    ]
    reply = await client.chat(model="fake", messages=history, tools=[WEATHER])
    assert reply.message.content == "Sunny."
    assert prompt_of(fake_engine).endswith("<tool>18 degrees, sun")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_lone_surrogate_escape_in_a_calls_arguments_is_a_replacement_character(
    http: httpx.AsyncClient, fake_engine: FakeEngine, stream: bool
) -> None:
    """The model's `\\ud800` escape decodes to no character, which UTF-8 cannot carry: the
    reply (arguments as an object) failed to encode, a 500 or a stream cut short."""
    fake_engine.reply = CALL.replace("Paris", "Pa\\ud800ris")
    body = {"model": "fake", "messages": HI, "tools": [WEATHER], "stream": stream}
    response = await http.post("/api/chat", json=body)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    assert calls == [{"function": {"name": "get_weather", "arguments": {"city": "Pa\ufffdris"}}}]


async def test_generate_templated_raw_and_fill_in_the_middle(
    client: ollama.AsyncClient, fake_engine: FakeEngine
) -> None:
    reply = await client.generate(model="fake", prompt="Why?", system="Be brief.")
    assert reply.response == "Hello there!" and reply.done
    assert prompt_of(fake_engine) == "<system>Be brief.<user>Why?"
    await client.generate(model="fake", prompt="raw text", raw=True)
    assert prompt_of(fake_engine) == "raw text"
    await client.generate(model="fake", prompt="def f(", suffix="\n    return x")
    assert prompt_of(fake_engine) == "<pre>def f(<suf>\n    return x<mid>"
    parts = [part async for part in await client.generate(model="fake", prompt="Go", stream=True)]
    assert "".join(p.response or "" for p in parts) == "Hello there!" and parts[-1].done


async def test_an_empty_request_loads_the_model(http: httpx.AsyncClient) -> None:
    for path, body in (("/api/generate", {"model": "fake"}),
                       ("/api/chat", {"model": "fake", "messages": []})):  # fmt: skip
        response = await http.post(path, json=body)
        assert response.status_code == 200 and response.json()["done_reason"] == "load"


@pytest.mark.parametrize(
    ("path", "body", "answer"),
    [
        ("/api/embed", {}, {"model": "fake-embed", "embeddings": []}),
        ("/api/embed", {"input": ""}, {"model": "fake-embed", "embeddings": []}),
        ("/api/embed", {"input": []}, {"model": "fake-embed", "embeddings": []}),
        ("/api/embeddings", {}, {"embedding": []}),
        ("/api/embeddings", {"prompt": ""}, {"embedding": []}),
    ],
)
async def test_an_empty_embedding_request_loads_the_model(
    path: str, body: dict[str, Any], answer: dict[str, Any]
) -> None:
    """Ollama's "an empty request loads the model" (`{"model": "all-minilm"}`, with `keep_alive`
    to keep it warm), as on /api/chat and /api/generate; a chat model is still the wrong kind."""
    lazy = ModelSpec("fake-embed", "embedding", lambda: FakeEmbedEngine())
    pool = EnginePool([FakeEngine()], [lazy])
    await pool.start()
    transport = httpx.ASGITransport(app=create_app(Settings(), pool))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:

        async def loaded() -> list[str]:
            return [m["model"] for m in (await http.get("/api/ps")).json()["models"]]

        assert await loaded() == ["fake"]
        response = await http.post(path, json={"model": "fake-embed", **body})
        assert response.status_code == 200, response.text
        assert response.json() == answer
        assert await loaded() == ["fake", "fake-embed"]
        wrong = await http.post(path, json={"model": "fake", **body})
        assert wrong.status_code == 400 and "not an embedding model" in wrong.json()["error"]
    await pool.drain(timeout=1)


@pytest.mark.parametrize("dimensions", [-3, 0])
async def test_dimensions_below_one_are_refused(dimensions: int) -> None:
    """On a Matryoshka model `dimensions: -3` kept all but the last 3 components (a numpy slice)
    and 0 gave empty vectors, both with a 200."""
    pool = EnginePool([FakeEmbedEngine("fake-matryoshka", matryoshka=True)])
    await pool.start()
    transport = httpx.ASGITransport(app=create_app(Settings(), pool))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        body = {"model": "fake-matryoshka", "input": "a man", "dimensions": dimensions}
        response = await http.post("/api/embed", json=body)
        assert response.status_code == 400, response.text
        assert "'dimensions'" in response.json()["error"]
        shortened = await http.post("/api/embed", json={**body, "dimensions": 3})
        assert len(shortened.json()["embeddings"][0]) == 3
    await pool.drain(timeout=1)


async def test_embeddings(client: ollama.AsyncClient, http: httpx.AsyncClient) -> None:
    embedded = await client.embed(model="fake-embed", input=["one", "two"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 8
    single = await client.embed(model="fake-embed", input="one")
    assert single.embeddings[0] == embedded.embeddings[0]
    legacy = await http.post("/api/embeddings", json={"model": "fake-embed", "prompt": "one"})
    assert legacy.json()["embedding"] == pytest.approx(embedded.embeddings[0])


async def test_errors_are_ollamas(client: ollama.AsyncClient, http: httpx.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat(model="nope", messages=HI)
    assert missing.value.status_code == 404 and "nope" in missing.value.error
    for path, body in (
        ("/api/chat", {"model": "fake", "messages": "hi"}),
        ("/api/chat", {"model": "fake", "messages": HI, "options": {"temperature": "hot"}}),
        ("/api/generate", {"model": "fake", "prompt": "x", "raw": True, "images": ["aGk="]}),
        ("/api/generate", {"model": "fake", "prompt": "x", "raw": True, "format": "json"}),
        ("/api/embed", {"model": "fake-embed", "input": [""]}),
        ("/api/embed", {"model": "fake", "input": "x"}),
        ("/api/show", {}),
    ):
        response = await http.post(path, json=body)
        assert 400 <= response.status_code < 500, (path, body, response.text)
        error = response.json()
        assert set(error) == {"error"} and isinstance(error["error"], str), error
    assert (await http.get("/api/nope")).json() == {"error": "Unknown request URL: GET /api/nope"}


async def test_an_engine_failure_mid_stream_ends_with_an_error_line(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    fake_engine.fail_after = 3
    body = {"model": "fake", "messages": HI}
    async with http.stream("POST", "/api/chat", json=body) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    # Tokens that reach the stream together may go out in one line: the text is what counts.
    assert "".join(line["message"]["content"] for line in lines[:-1]) == "Hel"
    assert set(lines[-1]) == {"error"}


async def test_logprobs_whole_and_streamed(client: ollama.AsyncClient) -> None:
    fields: dict[str, Any] = {"model": "fake", "messages": HI, "logprobs": True, "top_logprobs": 2}
    reply = await client.chat(**fields)
    assert [entry.token for entry in reply.logprobs or []] == list("Hello there!")
    first = (reply.logprobs or [])[0]
    assert first.logprob == -0.5 and [t.token for t in first.top_logprobs or []] == ["x", "y"]
    parts = [part async for part in await client.chat(**fields, stream=True)]
    streamed = [entry.token for part in parts for entry in part.logprobs or []]
    assert streamed == list("Hello there!")
    raw = await client.generate(model="fake", prompt="x", raw=True, logprobs=True)
    assert len(raw.logprobs or []) == 12 and (raw.logprobs or [])[0].top_logprobs == []
    assert (await client.chat(model="fake", messages=HI)).logprobs is None


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/api/chat", {"messages": HI, "options": {"top_k": -1}}, "'options.top_k'"),
        ("/api/chat", {"messages": HI, "options": {"num_predict": 10**9}}, "maximum context"),
        ("/api/chat", {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
         "messages[0].images[0]:"),
        ("/api/generate", {"prompt": "x", "system": "s", "images": ["#"]}, "images[0]:"),
        ("/api/embeddings", {"model": "fake-embed", "prompt": 3}, "'prompt'"),
    ],
)  # fmt: skip
async def test_errors_name_ollamas_fields(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], named: str
) -> None:
    response = await http.post(path, json={"model": "fake", "stream": False, **body})
    assert response.status_code == 400 and named in response.json()["error"], response.text


async def test_the_latest_tag_names_the_model(client: ollama.AsyncClient) -> None:
    """Ollama's `name:latest` is `name`: clients add the tag to names listed without one."""
    reply = await client.chat(model="fake:latest", messages=HI)
    assert reply.message.content == "Hello there!"
    assert (await client.show("fake:latest")).capabilities
    assert len((await client.embed(model="fake-embed:latest", input="x")).embeddings) == 1


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_a_client_that_leaves_cancels_its_generation(stream: bool) -> None:
    engine = FakeEngine(reply="word " * 200, token_delay_s=0.01, context_length=4096)
    body = {"model": "fake", "messages": HI, "stream": stream}
    with serve(create_app(Settings(), EnginePool([engine]))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=0.3) as http:
            if stream:
                async with http.stream("POST", "/api/chat", json=body) as response:
                    async for line in response.aiter_lines():
                        if '"content":"w' in line:
                            break  # leaving the block closes the connection mid-stream
            else:
                with pytest.raises(httpx.ReadTimeout):
                    await http.post("/api/chat", json=body)
        assert await wait_until(lambda: engine.active == 0, timeout=2)
    assert 0 < engine.tokens_generated < 1000


async def test_generate_for_a_model_without_a_chat_template_reads_the_prompt_as_written() -> None:
    """Ollama's default template is `{{ .Prompt }}`: a generate (not raw) for a model with no
    chat template is its prompt as written, where it was a 400; a chat is still refused."""

    class NoTemplate(FakeVisionEngine):  # (a vision model: its images reach the template)
        def encode_chat(self, *args: Any, **kwargs: Any) -> list[int]:
            raise NoChatTemplate()

    engine = NoTemplate("fake")
    pool = EnginePool([engine])
    await pool.start()
    transport = httpx.ASGITransport(app=create_app(Settings(), pool))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        for stream in (False, True):
            body = {"model": "fake", "prompt": "Once upon", "system": "x", "stream": stream}
            response = await http.post("/api/generate", json=body)
            assert response.status_code == 200, response.text
            lines = [json.loads(line) for line in response.text.splitlines()]
            assert "".join(line["response"] for line in lines) == "Hello there!"
            assert prompt_of(engine) == "Once upon"
        chat = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}]}
        refused = await http.post("/api/chat", json=chat)
        assert refused.status_code == 400 and "no chat template" in refused.json()["error"]
        # `format` and `images` need a template: refused for the model's lack of one, not as
        # though the client had asked for `raw` (which it did not).
        image = base64.b64encode(png()).decode()
        for field, value in (("format", "json"), ("images", [image])):
            asked = {"model": "fake", "prompt": "Once upon", field: value, "stream": False}
            refused = await http.post("/api/generate", json=asked)
            error = refused.json()["error"]
            assert refused.status_code == 400 and "no chat template" in error, error
            assert "raw" not in error, error
    await pool.drain(timeout=1)
