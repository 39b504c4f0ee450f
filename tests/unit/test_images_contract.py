"""Images in chat on every chat API (OpenAI chat, Responses, Anthropic Messages), on scripted
fake engines: what reaches the engine (decoded pixels, their digest, the `{"type": "image"}`
placeholder), and the 400s for bad images in each route's own shape, naming the part."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import httpx2
import numpy as np
import pytest
from anthropic import AsyncAnthropic
from fastapi import FastAPI
from openai import AsyncOpenAI
from PIL import Image

from engines.pool import EnginePool
from engines.types import ChatModelInfo
from server.app import create_app
from server.images import TOOL_IMAGE_TEXT, ImagePolicy, decode_image
from server.settings import Settings
from tests.fakes import FakeEngine


class FakeVisionEngine(FakeEngine):
    """The scripted chat engine, reporting a vision tower; records the messages it renders."""

    def __init__(self, name: str) -> None:
        super().__init__(name, context_length=4096)
        self.messages_seen: list[dict[str, Any]] = []

    def start(self) -> None:
        super().start()
        assert self.info is not None
        self.info = ChatModelInfo(**{**self.info.__dict__, "vision": True, "tool_images": True})

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        self.messages_seen = messages
        return super().encode_chat(messages, tools, template_kwargs)


def png(width: int = 8, height: int = 6, color: tuple[int, int, int] = (200, 10, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def chat_body(parts: list[dict[str, Any]], model: str = "vision") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": parts}]}


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture
def vision() -> FakeVisionEngine:
    return FakeVisionEngine("vision")


@pytest.fixture
def text_only() -> FakeEngine:
    return FakeEngine("text", context_length=4096)


@pytest.fixture
async def app(vision: FakeVisionEngine, text_only: FakeEngine) -> AsyncIterator[FastAPI]:
    pool = EnginePool([vision, text_only])
    served = create_app(Settings(max_body_bytes=4 << 20), pool)
    await pool.start()
    yield served
    await pool.drain(timeout=1)


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLXD_OFFLINE", raising=False)


def openai_error(response: httpx.Response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    return str(error["message"])


async def test_openai_sdk_sends_an_image_strict(app: FastAPI, vision: FakeVisionEngine) -> None:
    image = png(8, 6)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        client = AsyncOpenAI(
            base_url="http://127.0.0.1/v1",
            api_key="unused",
            http_client=http,
            _strict_response_validation=True,
            max_retries=0,
        )
        reply = await client.chat.completions.create(
            model="vision",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": data_uri(image)}},
                    ],
                }
            ],
        )
    assert reply.choices[0].message.content == "Hello there!"
    (request,) = vision.requests
    (decoded,) = request.images
    assert decoded.pixels.shape == (6, 8, 3) and decoded.pixels.dtype == np.uint8
    assert tuple(decoded.pixels[0, 0]) == (200, 10, 30)
    assert decoded.digest == hashlib.sha256(image).hexdigest()
    assert vision.messages_seen[0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image"},
    ]


async def test_anthropic_sdk_sends_an_image_strict(app: FastAPI, vision: FakeVisionEngine) -> None:
    image = png(5, 7)
    transport = httpx2.ASGITransport(app=app)
    async with AsyncAnthropic(
        base_url="http://127.0.0.1",
        api_key="unused",
        http_client=httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1"),
        _strict_response_validation=True,
        max_retries=0,
    ) as claude:
        message = await claude.messages.create(
            model="vision",
            max_tokens=50,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": base64.b64encode(image).decode(),
                            },
                        },
                        {"type": "text", "text": "Describe it."},
                    ],
                }
            ],
        )
    assert message.content[0].text == "Hello there!"  # type: ignore[union-attr]
    (decoded,) = vision.requests[0].images
    assert decoded.pixels.shape == (7, 5, 3)
    assert vision.messages_seen[-1]["content"] == [
        {"type": "image"},
        {"type": "text", "text": "Describe it."},
    ]


async def test_openai_sdk_responses_input_image(app: FastAPI, vision: FakeVisionEngine) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        client = AsyncOpenAI(
            base_url="http://127.0.0.1/v1",
            api_key="unused",
            http_client=http,
            _strict_response_validation=True,
            max_retries=0,
        )
        response = await client.responses.create(
            model="vision",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Look:"},
                        {"type": "input_image", "image_url": data_uri(png()), "detail": "low"},
                    ],
                }
            ],
        )
    assert response.output_text == "Hello there!"
    assert len(vision.requests[0].images) == 1
    assert vision.messages_seen[-1]["content"][1] == {"type": "image"}


async def test_the_same_image_twice_has_one_digest(
    http: httpx.AsyncClient, vision: FakeVisionEngine
) -> None:
    uri = data_uri(png())
    body = chat_body([image_part(uri), {"type": "text", "text": "and"}, image_part(uri)])
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    first, second = vision.requests[0].images
    assert first.digest == second.digest


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        (data_uri(b"not an image at all"), "could not be decoded"),
        (data_uri(png(), "image/svg+xml"), "unsupported image type"),
        ("data:image/png;base64,@@@@", "not valid base64"),
        ("data:image/png,rawbytes", "must be base64"),
        ("ftp://example.com/a.png", "data: URI or an http(s) URL"),
        ("https://example.com/cat.png", "offline"),
    ],
)
async def test_bad_images_are_400s_naming_the_part(
    http: httpx.AsyncClient, vision: FakeVisionEngine, url: str, needle: str
) -> None:
    body = chat_body([{"type": "text", "text": "see"}, image_part(url)])
    message = openai_error(
        await http.post("/v1/chat/completions", json=body), "messages[0].content[1]"
    )
    assert needle in message
    assert "object at 0x" not in message  # no Python object's repr (PIL's own message had one)
    assert not vision.requests


async def test_an_image_for_a_text_only_model(
    http: httpx.AsyncClient, text_only: FakeEngine
) -> None:
    body = chat_body([image_part(data_uri(png()))], model="text")
    message = openai_error(
        await http.post("/v1/chat/completions", json=body), "messages[0].content[0]"
    )
    assert "text-only" in message and not text_only.requests


def test_pixel_and_byte_bounds() -> None:
    policy = ImagePolicy(max_bytes=10_000, max_pixels=100 * 100)
    decode_image(png(100, 100), policy, 0, 0)  # at the bound: accepted
    with pytest.raises(Exception, match="pixels; the limit"):
        decode_image(png(101, 100), policy, 0, 0)
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 90, 3), np.uint8)).save(
        noisy, format="PNG"
    )
    with pytest.raises(Exception, match="bytes; the limit is 10000"):
        decode_image(noisy.getvalue(), policy, 2, 3)


async def test_too_many_images(http: httpx.AsyncClient) -> None:
    uri = data_uri(png())
    body = chat_body([image_part(uri)] * 17)
    message = openai_error(
        await http.post("/v1/chat/completions", json=body), "messages[0].content[16]"
    )
    assert "at most 16 images" in message


async def test_anthropic_bad_image_in_anthropic_shape(http: httpx.AsyncClient) -> None:
    block = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "bm90IGFuIGltYWdl"},
    }
    body = {
        "model": "vision",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, block]}],
    }
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[1]" in error["error"]["message"]
    assert "could not be decoded" in error["error"]["message"]


async def test_anthropic_url_image_offline(http: httpx.AsyncClient) -> None:
    block = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    body = {"model": "vision", "max_tokens": 20, "messages": [{"role": "user", "content": [block]}]}
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 400 and "offline" in response.json()["error"]["message"]


async def test_responses_bad_image_and_file_id(http: httpx.AsyncClient) -> None:
    body = {
        "model": "vision",
        "input": [
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/gif,x"}]}
        ],
    }
    message = openai_error(await http.post("/v1/responses", json=body), "input[0].content[0]")
    assert message.startswith("input[0].content[0]:") and "must be base64" in message
    body["input"] = [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]
    response = await http.post("/v1/responses", json=body)
    assert response.status_code == 400 and "Files API" in response.json()["error"]["message"]


BAD_BLOCK = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": "bm90IGFuIGltYWdl"},
}


def anthropic_error(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    return str(error["error"]["message"])


@pytest.mark.parametrize(
    ("model", "block", "needle"),
    [
        ("vision", BAD_BLOCK, "could not be decoded"),
        ("text", {**BAD_BLOCK, "source": {**BAD_BLOCK["source"], "data": "x"}}, "base64"),
        (
            "text",
            {**BAD_BLOCK, "source": {**BAD_BLOCK["source"], "data": data_uri(png())[22:]}},
            "text-only",
        ),
    ],
)
async def test_anthropic_image_errors_name_the_clients_message_and_block(
    http: httpx.AsyncClient, model: str, block: dict[str, Any], needle: str
) -> None:
    """A system prompt and a tool result become chat messages of their own, and a tool result
    block is no part of the user turn's chat content: the error still names the message and
    block the client sent (`messages[2].content[2]`), not the chat request's
    (`messages[4].content[1]`)."""
    body = {
        "model": model,
        "max_tokens": 20,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "shot", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "taken"},
                {"type": "text", "text": "what is in it?"},
                block,
            ]},
        ],
    }  # fmt: skip
    message = anthropic_error(await http.post("/v1/messages", json=body))
    assert message.startswith("messages[2].content[2]: ") and needle in message, message
    if needle != "text-only":  # count_tokens decodes images, and counts them for any model
        counted = await http.post("/v1/messages/count_tokens", json=body)
        assert anthropic_error(counted) == message


async def test_responses_image_errors_name_the_clients_item_and_part(
    http: httpx.AsyncClient,
) -> None:
    """`instructions` become a chat message of their own and a function call joins the
    assistant message before it: the error still names the input item the client sent."""
    body = {
        "model": "vision",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "take a screenshot"},
            {"role": "assistant", "content": "Taking it."},
            {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "taken"},
            {"role": "user", "content": [
                {"type": "input_text", "text": "what is in it?"},
                {"type": "input_image", "image_url": "data:image/png;base64,bm90IGFuIGltYWdl"},
            ]},
        ],
    }  # fmt: skip
    message = openai_error(await http.post("/v1/responses", json=body), "input[4].content[1]")
    assert message.startswith("input[4].content[1]: ") and "could not be decoded" in message


class _ImageHost(BaseHTTPRequestHandler):
    """/cat.png: an image; /elsewhere: a redirect to a loopback address; else 404."""

    image = png(3, 4)

    def do_GET(self) -> None:
        if self.path == "/cat.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        elif self.path == "/elsewhere":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/secret.png")
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    # (serve_forever looks for shutdown every poll_interval: 0.5 s by default)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_url_images_are_fetched_when_online(
    http: httpx.AsyncClient,
    vision: FakeVisionEngine,
    image_host: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    ok = await http.post(
        "/v1/chat/completions", json=chat_body([image_part(f"{image_host}/cat.png")])
    )
    assert ok.status_code == 200, ok.text
    assert vision.requests[-1].images[0].digest == hashlib.sha256(_ImageHost.image).hexdigest()
    missing = await http.post(
        "/v1/chat/completions", json=chat_body([image_part(f"{image_host}/nothing.png")])
    )
    assert "answered 404" in openai_error(missing, "messages[0].content[0]")
    private = await http.post(
        "/v1/chat/completions", json=chat_body([image_part(f"{image_host}/elsewhere")])
    )
    assert "private address" in openai_error(private, "messages[0].content[0]")


def tool_turns(api: str, image: dict[str, Any]) -> dict[str, Any]:
    """A tool round trip whose result holds text and an image, in `api`'s own shape."""
    if api == "messages":
        block = {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/png",
                "data": image["image_url"]["url"].split(",")[1],
            },
        }
        return {"max_tokens": 20, "messages": [
            {"role": "user", "content": "look"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": [{"type": "text", "text": "taken:"}, block]}]},
        ]}  # fmt: skip
    if api == "responses":
        return {"input": [
            {"role": "user", "content": "look"},
            {"type": "function_call", "call_id": "t1", "name": "shot", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "t1", "output": [
                {"type": "input_text", "text": "taken:"},
                {"type": "input_image", "image_url": image["image_url"]["url"]}]},
        ]}  # fmt: skip
    return {"messages": [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": [
            {"type": "text", "text": "taken:"}, image]},
    ]}  # fmt: skip


ROUTES = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}


@pytest.mark.parametrize("api", sorted(ROUTES))
async def test_an_image_in_a_tool_result_reaches_a_vision_model(
    http: httpx.AsyncClient, vision: FakeVisionEngine, api: str
) -> None:
    """Claude Code's Read tool, Codex's image viewer and MCP screenshots return images: a vision
    model reads them where the tool's result is (its template, or the generic tool prompt,
    places it); the request's images are in prompt order."""
    first, second = png(8, 6, (1, 2, 3)), png(4, 4, (9, 9, 9))
    body = {"model": "vision", **tool_turns(api, image_part(data_uri(second)))}
    key = "input" if api == "responses" else "messages"
    body[key][0] = {"role": "user", "content": [
        {"type": "input_text" if api == "responses" else "text", "text": "look"},
        {"type": "input_image", "image_url": data_uri(first)} if api == "responses"
        else {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                          "data": data_uri(first).split(",")[1]}}
        if api == "messages" else image_part(data_uri(first)),
    ]}  # fmt: skip
    response = await http.post(ROUTES[api], json=body)
    assert response.status_code == 200, response.text
    [request] = vision.requests
    assert [image.pixels.shape[:2] for image in request.images] == [(6, 8), (4, 4)]
    [tool] = [m for m in vision.messages_seen if m["role"] == "tool"]
    assert {"type": "image"} in tool["content"]


@pytest.mark.parametrize("api", sorted(ROUTES))
async def test_a_text_model_reads_a_tool_results_image_as_text(
    http: httpx.AsyncClient, text_only: FakeEngine, api: str
) -> None:
    """Not a 400 (that would fail every later request of the agent's session); chat's `tool`
    messages included, though OpenAI's own API takes only text there."""
    body = {"model": "text", **tool_turns(api, image_part(data_uri(png())))}
    response = await http.post(ROUTES[api], json=body)
    assert response.status_code == 200, response.text
    [request] = text_only.requests
    assert request.images == ()
    assert TOOL_IMAGE_TEXT in text_only.decode(list(request.prompt_tokens))


async def test_a_bad_image_in_a_tool_result_is_a_400_for_a_vision_model(
    http: httpx.AsyncClient,
) -> None:
    body = {"model": "vision", **tool_turns("chat", image_part(data_uri(b"not an image")))}
    message = openai_error(await http.post(ROUTES["chat"], json=body), "messages[2].content[1]")
    assert "could not be decoded" in message


@pytest.mark.parametrize(
    ("api", "is_error", "param"),
    [
        ("messages", False, "messages[2].content[0].content[2]"),
        ("messages", True, "messages[2].content[0].content[2]"),
        ("responses", False, "input[2].output[2]"),
    ],
)
async def test_a_bad_image_in_a_tool_result_names_the_clients_field(
    http: httpx.AsyncClient, api: str, is_error: bool, param: str
) -> None:
    """The 400 names the image where the client put it: its block in the `tool_result`'s
    content (not the chat part mlxd made, behind an `Error: ` prefix and newlines between
    blocks), the part of a `function_call_output`'s `output` (not `content`)."""
    body = {"model": "vision", **tool_turns(api, image_part(data_uri(b"not an image")))}
    key, good = "input", {"type": "input_image", "image_url": data_uri(png())}
    if api == "messages":
        key, good = (
            "messages",
            {
                "type": "image",
                "source": {
                    "type": "base64",
                    "media_type": "image/png",
                    "data": data_uri(png())[22:],
                },
            },
        )
    result = body[key][2]
    blocks = result["content"][0] if api == "messages" else result
    field = "content" if api == "messages" else "output"
    blocks[field].insert(1, good)  # text, a good image, the bad one
    if is_error:
        blocks["is_error"] = True
    response = await http.post(ROUTES[api], json=body)
    if api == "messages":
        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        assert message.startswith(f"{param}: "), message
    else:
        openai_error(response, param)
