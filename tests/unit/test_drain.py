"""Shutdown's drain (server/drain.py) on a real uvicorn, shut down as `mlxd serve` is by SIGTERM:
a request still generating when the drain period (MLXD_DRAIN_TIMEOUT_S) ends gets a 503 with
Retry-After in its route's own shape — uvicorn would cancel it and answer a plain-text 500 — and
a stream its error event; a request that finishes within the period gets its 200; a request that
arrives while draining gets the same 503."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.servers import running, url, wait_until
from tests.unit.test_messages_contract import sse_events

GRACE_S = 1.5
HELLO = [{"role": "user", "content": "hi"}]
SLOW = 300  # tokens: 6 s at the engine's pace, far past the drain period
QUICK = 30  # tokens: 0.6 s, within it


def engine() -> FakeEngine:
    return FakeEngine(reply="x" * 1000, token_delay_s=0.02, context_length=4096)


def chat(tokens: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/completions", {"model": "fake", "messages": HELLO, "max_tokens": tokens,
                                    **fields}  # fmt: skip


def completion(tokens: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    return "/v1/completions", {"model": "fake", "prompt": "hi", "max_tokens": tokens, **fields}


def response(tokens: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    return "/v1/responses", {"model": "fake", "input": "hi", "max_output_tokens": tokens,
                             **fields}  # fmt: skip


def message(tokens: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    return "/v1/messages", {"model": "fake", "messages": HELLO, "max_tokens": tokens, **fields}


async def during_shutdown(
    fake: FakeEngine, home: Path, requests: list[tuple[str, dict[str, Any]]]
) -> list[tuple[httpx.Response, float]]:
    """The responses to `requests`, sent together, each with when it ended (seconds after the
    shutdown started): once the engine is generating all of them, the server starts shutting
    down."""
    app = create_app(Settings(home=home, drain_timeout_s=GRACE_S), EnginePool([fake]))
    with running(app) as server:
        async with httpx.AsyncClient(base_url=url(server), timeout=30) as http:

            async def timed(path: str, body: dict[str, Any]) -> tuple[httpx.Response, float]:
                reply = await http.post(path, json=body)
                return reply, time.monotonic()

            pending = [asyncio.ensure_future(timed(p, b)) for p, b in requests]
            assert await wait_until(lambda: fake.active == len(requests), timeout=10)
            started = time.monotonic()
            server.should_exit = True
            return [(reply, ended - started) for reply, ended in await asyncio.gather(*pending)]


def assert_openai_503(reply: httpx.Response) -> None:
    assert reply.status_code == 503, reply.text
    assert int(reply.headers["retry-after"]) > 0
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "server_shutting_down"), error
    assert "shutting down" in error["message"]


def assert_anthropic_503(reply: httpx.Response) -> None:
    assert reply.status_code == 503, reply.text
    assert int(reply.headers["retry-after"]) > 0
    body = reply.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == "overloaded_error"
    assert "shutting down" in body["error"]["message"]


@pytest.mark.parametrize(
    ("request_for", "check"),
    [
        (chat, assert_openai_503),
        (completion, assert_openai_503),
        (response, assert_openai_503),
        (message, assert_anthropic_503),
    ],
    ids=["chat", "completions", "responses", "messages"],
)
async def test_a_request_still_running_when_the_drain_ends_gets_503_in_its_shape(
    request_for: Callable[[int], tuple[str, dict[str, Any]]],
    check: Callable[[httpx.Response], None],
    tmp_path: Path,
) -> None:
    fake = engine()
    ((reply, ended),) = await during_shutdown(fake, tmp_path, [request_for(SLOW)])
    check(reply)
    assert ended >= GRACE_S  # not before the drain period was over
    assert await wait_until(lambda: fake.active == 0, timeout=5)  # its generation was stopped


async def test_a_request_finishing_within_the_drain_gets_its_200(tmp_path: Path) -> None:
    (quick, quick_ended), (slow, _) = await during_shutdown(
        engine(), tmp_path, [chat(QUICK), chat(SLOW)]
    )
    assert 0 < quick_ended < GRACE_S  # it ended while the server was draining
    assert quick.status_code == 200, quick.text
    choice = quick.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("x" * QUICK, "length")
    assert_openai_503(slow)


async def test_a_stream_still_running_when_the_drain_ends_ends_with_its_error(
    tmp_path: Path,
) -> None:
    replies = await during_shutdown(
        engine(), tmp_path, [chat(SLOW, stream=True), message(SLOW, stream=True)]
    )
    chat_lines = [line for line in replies[0][0].text.splitlines() if line.startswith("data: ")]
    assert chat_lines[-1] == "data: [DONE]", chat_lines[-3:]
    assert json.loads(chat_lines[-2].removeprefix("data: "))["error"]["code"] == (
        "server_shutting_down"
    )
    name, data = sse_events(replies[1][0].text)[-1]
    assert (name, data["error"]["type"]) == ("error", "overloaded_error"), data


async def test_a_request_arriving_while_draining_gets_503_in_its_shape(tmp_path: Path) -> None:
    """In-process: over a socket, uvicorn stops accepting connections as it starts draining."""
    pool = EnginePool([engine()])
    app = create_app(Settings(home=tmp_path, drain_timeout_s=GRACE_S), pool)
    await pool.start()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            app.state.drain.begin()
            path, body = message(QUICK)
            assert_anthropic_503(await http.post(path, json=body))
            path, body = chat(QUICK)
            assert_openai_503(await http.post(path, json=body))
    finally:
        await pool.drain(timeout=1)
