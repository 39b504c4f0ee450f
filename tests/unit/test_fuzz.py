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

CHAT_FIELDS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
    "min_p", "seed", "stop", "n", "stream", "stream_options", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "user", "tools",
    "response_format",
]  # fmt: skip
COMPLETION_FIELDS = ["model", "prompt", "suffix", "echo", "logprobs", "best_of", *CHAT_FIELDS[2:]]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "user", "system", "assistant", "tool", "bogus"])},
    optional={"content": st.one_of(st.text(max_size=30), st.text(max_size=30), json_values)},
)


def bodies(fields: list[str], extra: dict[str, Any]) -> Any:
    values = st.dictionaries(st.sampled_from(fields), json_values, max_size=6)
    return st.builds(
        lambda base, more: {**more, **base}, st.fixed_dictionaries({}, optional=extra), values
    )


CHAT_BODIES = bodies(
    CHAT_FIELDS, {"model": st.just("fake"), "messages": st.lists(message, max_size=3)}
)
COMPLETION_BODIES = bodies(
    COMPLETION_FIELDS,
    {"model": st.just("fake"), "prompt": st.one_of(st.text(max_size=30), json_values)},
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    engine = FakeEngine(reply="ok", context_length=4096)
    with TestClient(
        create_app(Settings(), EnginePool([engine])), base_url="http://127.0.0.1"
    ) as http:
        yield http


def check(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    elif response.headers["content-type"].startswith("application/json"):
        assert "choices" in response.json()
    else:
        assert response.text.rstrip().endswith("data: [DONE]")


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
