"""Slow request bodies over a real socket (uvicorn on 127.0.0.1:0): a body that stalls, or takes
longer than the deadline in all, is a 408 in the route's shape and the connection closes; a body
that is slow but steady is read to the end; nothing else waits for either."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine, FakeSpeechEngine
from tests.servers import serve
from tests.speech import encode

CHAT = json.dumps(
    {"model": "fake", "messages": [{"role": "user", "content": "go"}], "max_tokens": 40}
).encode()
READ_LIMIT_S = 10  # far above any timeout set here: without one, the 408 would never come


async def send_head(url: str, path: str, content_length: int, first: bytes) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter
]:  # fmt: skip
    """A connection that has sent a POST's headers (declaring `content_length` bytes of body)
    and the `first` bytes of that body."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    )
    writer.write(head.encode() + first)
    await writer.drain()
    return reader, writer


def parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers (lower-case names) and JSON body of a raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body)


async def test_a_stalled_body_is_an_openai_408_and_disturbs_nothing_else() -> None:
    engine = FakeEngine(reply="word " * 8, token_delay_s=0.05, context_length=4096)
    settings = Settings(body_timeout_s=1.5)  # time for /health on a loaded machine
    with serve(create_app(settings, EnginePool([engine]))) as url:
        streamed = {"model": "fake", "messages": [{"role": "user", "content": "go"}],
                    "stream": True, "max_tokens": 40}  # fmt: skip
        async with (
            httpx.AsyncClient(base_url=url, timeout=READ_LIMIT_S) as http,
            http.stream("POST", "/v1/chat/completions", json=streamed) as stream,
        ):
            assert stream.status_code == 200
            reader, writer = await send_head(url, "/v1/chat/completions", len(CHAT), CHAT[:20])
            sent = time.monotonic()
            answer = asyncio.create_task(reader.read())  # up to the end: the server closes
            health = await http.get("/health")
            assert health.status_code == 200
            assert not answer.done()  # /health was answered while the body was stalled
            raw = await asyncio.wait_for(answer, READ_LIMIT_S)
            waited = time.monotonic() - sent
            lines = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
        writer.close()
    status, headers, body = parse(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert body == {
        "error": {
            "message": "No request body data arrived for 1.5 s",
            "type": "invalid_request_error",
            "param": None,
            "code": "body_timeout",
        }
    }
    assert 1.45 <= waited < READ_LIMIT_S
    # The stream that ran meanwhile (longer than the body timeout) lost nothing.
    assert lines[-1] == "data: [DONE]"
    text = "".join(
        json.loads(line.removeprefix("data: "))["choices"][0]["delta"].get("content", "")
        for line in lines[:-1]
    )
    assert text == engine.reply


async def test_a_body_never_sent_on_messages_is_an_anthropic_408() -> None:
    with serve(create_app(Settings(body_timeout_s=0.3), EnginePool([FakeEngine()]))) as url:
        reader, writer = await send_head(url, "/v1/messages", 100, b"")
        raw = await asyncio.wait_for(reader.read(), READ_LIMIT_S)
        writer.close()
    status, headers, body = parse(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "No request body data arrived for 0.3 s",
        },
    }


async def test_a_body_trickling_past_the_deadline_is_a_408() -> None:
    settings = Settings(body_timeout_s=1.0, body_deadline_s=1.5)
    with serve(create_app(settings, EnginePool([FakeEngine()]))) as url:
        reader, writer = await send_head(url, "/v1/chat/completions", len(CHAT), b"")
        sent = time.monotonic()

        async def trickle() -> None:  # a byte every 0.1 s: never idle for the body timeout
            for byte in CHAT:
                await asyncio.sleep(0.1)
                writer.write(bytes([byte]))
                await writer.drain()

        trickling = asyncio.create_task(trickle())
        try:
            raw = await asyncio.wait_for(reader.read(), READ_LIMIT_S)
        finally:
            trickling.cancel()
            writer.close()
    waited = time.monotonic() - sent
    status, _, body = parse(raw)
    assert status == 408
    assert body["error"]["message"] == "The request body took longer than 1.5 s to arrive"
    assert body["error"]["code"] == "body_timeout"
    assert 1.45 <= waited < READ_LIMIT_S


async def test_a_slow_steady_upload_and_a_slow_answer_succeed() -> None:
    """Pieces of an audio upload 0.1 s apart, 1 s in all, with a body timeout of 0.5 s; then a
    non-streamed answer that takes longer than the body timeout (the route waits on `receive`
    for a disconnect meanwhile, which is no body read)."""
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    upload = httpx.Request(
        "POST",
        "http://x/",
        data={"model": "fake-whisper"},
        files={"file": ("a.wav", encode(tone, "wav", "pcm_s16le"))},
    )
    payload = upload.read()

    async def slowly() -> AsyncIterator[bytes]:
        step = len(payload) // 10 + 1
        for start in range(0, len(payload), step):
            await asyncio.sleep(0.1)
            yield payload[start : start + step]

    engine = FakeEngine(reply="word " * 8, token_delay_s=0.02, context_length=4096)
    pool = EnginePool([engine, FakeSpeechEngine()])
    with serve(create_app(Settings(body_timeout_s=0.5), pool)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=READ_LIMIT_S) as http:
            started = time.monotonic()
            transcribed = await http.post(
                "/v1/audio/transcriptions",
                content=slowly(),
                headers={"content-type": upload.headers["content-type"]},
            )
            uploading = time.monotonic() - started
            answered = await http.post("/v1/chat/completions", content=CHAT)
    assert transcribed.status_code == 200, transcribed.text
    assert transcribed.json()["text"] == "Hello there. General Kenobi."
    assert uploading >= 1.0
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"] == engine.reply
