"""Log lines: the request id on every line of a request (and in `x-request-id`), JSON or text,
control characters escaped."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from engines.pool import EnginePool
from server.app import create_app
from server.logs import configure
from server.settings import Settings
from tests.fakes import FakeEngine


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


async def serve_once(path: str, body: dict[str, object] | None = None) -> httpx.Response:
    pool = EnginePool([FakeEngine()])
    app = create_app(Settings(), pool)
    await pool.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await (http.post(path, json=body) if body else http.get(path))
    await pool.drain(timeout=1)
    return response


async def test_json_lines_carry_the_completion_id(captured: io.StringIO) -> None:
    configure("info", "json", captured)
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    response = await serve_once("/v1/chat/completions", body)
    completion_id = response.json()["id"]
    assert response.headers["x-request-id"] == completion_id
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    mine = [line for line in lines if line["request_id"] == completion_id]
    assert any("chat model='fake'" in line["message"] for line in mine)
    assert {"time", "level", "logger", "message", "request_id"} <= set(mine[0])


async def test_every_response_gets_an_id(captured: io.StringIO) -> None:
    configure("info", "text", captured)
    response = await serve_once("/v1/models")
    assert response.headers["x-request-id"].startswith("req-")
    missing = await serve_once("/nope")
    assert missing.status_code == 404 and missing.headers["x-request-id"].startswith("req-")


def test_control_characters_are_escaped(captured: io.StringIO) -> None:
    configure("info", "text", captured)
    logging.getLogger("test").info("model=%r user=%s", "x", "evil\n2026-01-01 INFO forged")
    [line] = captured.getvalue().splitlines()
    assert "evil\\n2026-01-01 INFO forged" in line and "[-]" in line
