"""Validation errors read as the API's own words on every route that turns pydantic's errors
into a 400: a validator's text without pydantic's "Value error, " prefix, JSON's type names
(an object, an array) instead of Python's and pydantic's class names, discriminators and
"after validation". Exact messages, since their wording is the point."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from server.config import ConfigError, ModelEntry, load_models_file
from server.hub_cli import one_line
from server.settings import Settings
from tests.fake_embed import FakeEmbedEngine
from tests.fakes import FakeEngine
from tests.helpers import HELLO, asgi_client, assert_openai_error

PYDANTIC_WORDS = ("Value error", "instance of", "discriminator", "after validation", "dictionary")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(
        Settings(), [FakeEngine(context_length=4096), FakeEmbedEngine()]
    ) as client:
        yield client


def anthropic(**fields: Any) -> dict[str, Any]:
    return {"model": "fake", "max_tokens": 8, "messages": HELLO, **fields}


def user_blocks(*blocks: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            anthropic(stop_sequences=[""]),
            "Invalid value for 'stop_sequences': stop strings must not be empty",
        ),
        (
            anthropic(
                messages=user_blocks({"type": "tool_use", "id": "t", "name": "f", "input": {}})
            ),
            "Invalid value for 'messages[0]': a user message cannot hold tool_use blocks",
        ),
        (
            anthropic(tool_choice={"type": "tool"}),
            "Invalid value for 'tool_choice': a tool_choice of type 'tool' needs the tool's name",
        ),
        (anthropic(thinking=3), "Invalid value for 'thinking': Input should be an object"),
        (anthropic(messages="hi"), "Invalid value for 'messages': Input should be an array"),
        (
            anthropic(messages=user_blocks({"text": "no type"})),
            "Invalid value for 'messages[0].content[0]': Input should have a 'type' field",
        ),
        (
            anthropic(messages=user_blocks({"type": "image", "source": {"type": "file"}})),
            "Invalid value for 'messages[0].content[0].source': "
            "Input 'type' should be one of 'base64', 'url', not 'file'",
        ),
    ],
)
async def test_messages_errors_are_clean(
    http: httpx.AsyncClient, body: dict[str, Any], message: str
) -> None:
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }


@pytest.mark.parametrize(
    ("path", "body", "param", "message"),
    [
        (
            "/v1/chat/completions",
            {"model": "fake", "messages": HELLO, "stop": [""]},
            "stop",
            "Invalid value for 'stop': stop strings must not be empty",
        ),
        (
            "/v1/chat/completions",
            {"model": "fake", "messages": HELLO, "logit_bias": {"²": 1}},
            "logit_bias",
            "Invalid value for 'logit_bias': logit_bias keys must be token ids, got '²'",
        ),
        (
            "/v1/chat/completions",
            {"model": "fake", "messages": [3]},
            "messages[0]",
            "Invalid value for 'messages[0]': Input should be an object",
        ),
        (
            "/v1/completions",
            {"model": "fake", "prompt": []},
            "prompt",
            "Invalid value for 'prompt': prompt must not be an empty list",
        ),
        (
            "/v1/embeddings",
            {"model": "fake-embed", "input": [-1]},
            "input",
            "Invalid value for 'input': token ids must not be negative",
        ),
        (
            "/v1/responses",
            {"model": "fake", "input": "hi", "text": 3},
            "text",
            "Invalid value for 'text': Input should be an object",
        ),
        (
            "/v1/responses",
            {"model": "fake", "input": [{"role": "user", "content": [3]}]},
            "input[0].content[0]",
            "Invalid value for 'input[0].content[0]': Input should be an object",
        ),
        (
            "/v1/rerank",
            {"model": "fake-embed", "query": "q", "documents": []},
            "documents",
            "Invalid value for 'documents': Array should have at least 1 item, not 0",
        ),
    ],
)
async def test_openai_errors_are_clean(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], param: str, message: str
) -> None:
    error = assert_openai_error(await http.post(path, json=body), 400, param, "invalid_value")
    assert error["message"] == message


async def test_no_pydantic_wording_in_a_batch_of_wrong_shapes(http: httpx.AsyncClient) -> None:
    """Wrong shapes at several depths of each API: whatever pydantic says, not in its words."""
    bodies = [
        ("/v1/chat/completions", {"model": "fake", "messages": HELLO, "tools": [3]}),
        ("/v1/chat/completions", {"model": "fake", "messages": HELLO, "response_format": []}),
        ("/v1/chat/completions", {"model": "fake", "messages": [{"role": "tool", "content": ""}]}),
        ("/v1/messages", anthropic(system=[3])),
        ("/v1/messages", anthropic(messages=user_blocks({"type": "image", "source": 3}))),
        ("/v1/messages", anthropic(messages=user_blocks({"type": "bogus"}))),
        ("/v1/messages/count_tokens", {"model": "fake", "messages": [3]}),
        (
            "/v1/responses",
            {
                "model": "fake",
                "input": [{"type": "function_call_output", "call_id": "c", "output": [3]}],
            },
        ),
        ("/v1/embeddings", {"model": "fake-embed", "input": []}),
    ]
    for path, body in bodies:
        response = await http.post(path, json=body)
        assert response.status_code == 400, (path, response.text)
        message = response.text
        assert not any(word in message for word in PYDANTIC_WORDS), (path, message)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('kind = "llm"', "models.0.kind: unknown kind 'llm'; one of: chat, speech, tts, embedding"),
        (
            "speculative_tokens = 0",
            "models.0.speculative_tokens: Input should be greater than or equal to 1",
        ),
    ],
)
def test_the_models_file_reads_the_same_words(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(f'[[models]]\nname = "coder"\nsource = "/m"\n{entry}\n')
    with pytest.raises(ConfigError) as raised:
        load_models_file(path)
    assert str(raised.value) == f"{path}: {message}"


def test_the_command_line_reads_the_same_words() -> None:
    with pytest.raises(ValidationError) as raised:
        ModelEntry.model_validate({"name": "coder", "source": "/m", "kind": "llm"})
    assert one_line(raised.value) == (
        "kind: unknown kind 'llm'; one of: chat, speech, tts, embedding"
    )
