"""Requests shaped like those of the editor plugins and apps in docs/clients.md (Continue, Cline,
Zed, aider via litellm, Open WebUI): streamed with usage, `max_completion_tokens`, fields mlxd
does not know. Each must stream to `[DONE]` with a usage chunk when asked, and name what it
ignored."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.fakes import FakeEngine

MESSAGES = [
    {"role": "system", "content": "You are a helpful coding assistant."},
    {"role": "user", "content": [{"type": "text", "text": "Explain this function."}]},
]

SHAPES: dict[str, dict[str, Any]] = {
    "continue": {
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": 64,
        "temperature": 0.2,
        "stop": ["<|im_end|>"],
        "stream_options": {"include_usage": True},
    },
    "cline": {
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_completion_tokens": 64,
    },
    "zed": {
        "messages": MESSAGES,
        "stream": True,
        "temperature": 1.0,
        "max_completion_tokens": 64,
        "parallel_tool_calls": False,
        "tools": [],
        "prompt_cache_key": "thread-1",
    },
    "aider-litellm": {
        "messages": MESSAGES,
        "stream": True,
        "temperature": 0,
        "stream_options": {"include_usage": True},
        "extra_headers": {"x": "y"},
    },
    "open-webui": {
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "admin@example.com",
        "metadata": {"chat_id": "abc"},
        "keep_alive": "5m",
    },
}
IGNORED = {
    "continue": set(),
    "cline": set(),
    "zed": {"prompt_cache_key"},
    "aider-litellm": {"extra_headers"},
    "open-webui": {"user", "metadata", "keep_alive"},
}


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(context_length=4096)


@pytest.mark.parametrize("client", list(SHAPES))
async def test_editor_request_shapes_stream_to_done(http: httpx.AsyncClient, client: str) -> None:
    body = {"model": "fake", **SHAPES[client]}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        ignored = response.headers.get("x-mlxd-ignored-fields", "")
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello there!"
    if body.get("stream_options", {}).get("include_usage"):
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert set(filter(None, ignored.split(","))) == IGNORED[client]
