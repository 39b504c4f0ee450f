"""Claude Code 2.1.332's full requests (no `--bare`: its whole system prompt, 12 tools, its
environment as a `system` message after the first user message, kept there), two turns of one
session captured against mlxd on the real Qwen2.5-Coder-0.5B: both are accepted whole and
streamed in order, the follow-up's prompt extends the first one's (so the prefix cache serves
it), and the Read result reaches the prompt."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import asgi_client

CAPTURE = json.loads((Path(__file__).parent / "claude_code_2_1_332_full_turns.json").read_text())
FIRST, FOLLOW_UP = CAPTURE["turns"]
MODEL = FIRST["model"]


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(MODEL, reply="Hi.", context_length=200_000)


@pytest.fixture
async def http(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(Settings(max_body_bytes=1 << 22), [engine]) as client:
        yield client


async def send(http: httpx.AsyncClient, body: dict[str, Any], engine: FakeEngine) -> str:
    """POST the captured body as Claude Code does; the prompt the engine got."""
    response = await http.post("/v1/messages?beta=true", json=body, headers=CAPTURE["headers"])
    assert response.status_code == 200, response.text
    lines = response.text.split("\r\n")
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    names = [name for name in names if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    return "".join(chr(t) for t in engine.requests[-1].prompt_tokens)


async def test_both_turns_are_served_and_the_follow_up_extends_the_first(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    first = await send(http, FIRST, engine)
    # Its tools block: all but DeferredToolPlaceholder, deferred (`defer_loading`) and never loaded
    deferred = [tool["name"] for tool in FIRST["tools"] if tool.get("defer_loading")]
    assert deferred == ["DeferredToolPlaceholder"] and len(FIRST["tools"]) == 12
    assert len(engine.tools_seen or []) == 11
    follow_up = await send(http, FOLLOW_UP, engine)
    # The environment `system` message (blocks in the first turn, a string in the follow-up)
    # stays after the first user turn the same way both times: the first prompt is a prefix.
    assert follow_up.startswith(first)
    system, after_user = first.split("<user>", 1)
    assert system.startswith("<system>") and "Primary working directory" not in system
    assert "<system># Environment\nYou have been invoked" in after_user
    assert "x-anthropic-billing-header" not in first
    assert "<tool>1\tThe secret word is: marmalade" in follow_up[len(first) :]
