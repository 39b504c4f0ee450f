"""The fuzz properties of tests/unit/test_fuzz.py against the real engine (tiny model): real
templates, tokenizer and sampler behind the HTTP edge — still never a 5xx."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.llm.engine import LLMEngine
from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fuzz_bodies import CHAT_FIELDS, COMPLETION_FIELDS, bodies, check, json_values, message

CHAT_BODIES = bodies(
    CHAT_FIELDS, {"model": st.just("tiny"), "messages": st.lists(message, max_size=3)}
)
COMPLETION_BODIES = bodies(
    COMPLETION_FIELDS,
    {"model": st.just("tiny"), "prompt": st.one_of(st.text(min_size=1, max_size=30), json_values)},
)
FUZZ = settings(
    max_examples=int(os.environ.get("MLXD_FUZZ_EXAMPLES", "60")),  # more: a longer local hunt
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    engine = LLMEngine("tiny", tiny_model_dir)
    with TestClient(
        create_app(Settings(), EnginePool([engine])), base_url="http://127.0.0.1"
    ) as http:
        yield http


@FUZZ
@given(body=CHAT_BODIES)
def test_chat_never_5xx(client: TestClient, body: dict[str, Any]) -> None:
    check(client.post("/v1/chat/completions", content=json.dumps(body)))


@FUZZ
@given(body=COMPLETION_BODIES)
def test_completions_never_5xx(client: TestClient, body: dict[str, Any]) -> None:
    check(client.post("/v1/completions", content=json.dumps(body)))
