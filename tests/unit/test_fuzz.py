"""Property: whatever JSON a client sends to the generation routes, the answer is a 200 or an
OpenAI-shaped 4xx — never a 5xx, never a framework's own error body (fake engine, in-process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.fuzz_bodies import CHAT_BODIES, COMPLETION_BODIES, check


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    engine = FakeEngine(reply="ok", context_length=4096)
    with TestClient(
        create_app(Settings(), EnginePool([engine])), base_url="http://127.0.0.1"
    ) as http:
        yield http


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=CHAT_BODIES)
def test_chat_never_5xx(client: TestClient, body: dict[str, Any]) -> None:
    check(client.post("/v1/chat/completions", content=json.dumps(body)))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=COMPLETION_BODIES)
def test_completions_never_5xx(client: TestClient, body: dict[str, Any]) -> None:
    check(client.post("/v1/completions", content=json.dumps(body)))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_5xx(client: TestClient, raw: bytes) -> None:
    check(client.post("/v1/chat/completions", content=raw))
