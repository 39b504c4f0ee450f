"""Claude Code 2.1.332's requests around its tool search (captured from `claude -p` on its full
prompt against mlxd): with tool search off (`ENABLE_TOOL_SEARCH=false`, or its fallback when a
search result is refused) it declares all 22 of its tools in full, 72 KiB of JSON, and every
turn must still be served."""

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

CAPTURE = json.loads((Path(__file__).parent / "claude_code_2_1_332_tool_search.json").read_text())
SEARCH_OFF = CAPTURE["tool_search_off_turn"]


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(SEARCH_OFF["body"]["model"], reply="Hi.", context_length=200_000)


@pytest.fixture
async def http(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    # The default settings: their limits are what is under test.
    async with asgi_client(Settings(), [engine]) as client:
        yield client


async def post(http: httpx.AsyncClient, turn: dict[str, Any]) -> httpx.Response:
    return await http.post("/v1/messages?beta=true", json=turn["body"], headers=turn["headers"])


async def test_every_tool_declared_in_full_is_served(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    tools = SEARCH_OFF["body"]["tools"]
    assert len(tools) == 22 and len(json.dumps(tools)) > 64 * 1024  # what the test is about
    response = await post(http, SEARCH_OFF)
    assert response.status_code == 200, response.text
    assert len(engine.tools_seen or []) == 22
    counted = await http.post(
        "/v1/messages/count_tokens",
        json={key: SEARCH_OFF["body"][key] for key in ("model", "messages", "system", "tools")},
        headers=SEARCH_OFF["headers"],
    )
    assert counted.status_code == 200, counted.text
