"""Anthropic-defined client tools on `/v1/messages` (bash, the text editor, memory): named by
`type` and `name` alone, offered to the model with their documented input schema, and called
back as `tool_use` blocks the client runs; server tools are still left out. Through the strict
`anthropic` SDK on a scripted engine.

The shape is the Vercel AI SDK's (`@ai-sdk/anthropic` 3.0.140, `anthropic.tools.bash_20250124`,
`textEditor_20250728`): with `toolChoice: "required"` it was a 400 ("mlxd runs none of its
tools"), and without it the model was never shown the tool."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic import AsyncAnthropic, BadRequestError

from tests.fakes import FakeEngine

BASH_CALL = '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
TOOLS: list[Any] = [
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool", "max_characters": 9},
    {"type": "text_editor_20250124", "name": "str_replace_editor"},
    {"type": "memory_20250818", "name": "memory"},
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 1},
]


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(reply=BASH_CALL, context_length=4096)


async def test_client_tools_are_offered_with_their_schema(
    claude: AsyncAnthropic, fake_engine: FakeEngine
) -> None:
    message = await claude.messages.create(
        model="fake",
        max_tokens=100,
        messages=[{"role": "user", "content": "List the files."}],
        tools=TOOLS,
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.type == "tool_use" and (call.name, call.input) == ("bash", {"command": "ls"})
    offered = {t["function"]["name"]: t["function"] for t in fake_engine.tools_seen or []}
    assert list(offered) == ["bash", "str_replace_based_edit_tool", "str_replace_editor", "memory"]
    assert offered["bash"]["parameters"]["required"] == ["command"]
    commands = {
        name: offered[name]["parameters"]["properties"]["command"]["enum"]
        for name in ("str_replace_based_edit_tool", "str_replace_editor", "memory")
    }
    assert "undo_edit" not in commands["str_replace_based_edit_tool"]
    assert "undo_edit" in commands["str_replace_editor"]
    assert "rename" in commands["memory"]
    assert all(function["description"] for function in offered.values())
    assert fake_engine.requests[-1].grammar is not None  # `any`: a call is forced


async def test_only_server_tools_still_cannot_be_forced(claude: AsyncAnthropic) -> None:
    with pytest.raises(BadRequestError, match="mlxd runs none of its tools"):
        await claude.messages.create(
            model="fake",
            max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
            tools=TOOLS[-1:],
            tool_choice={"type": "any"},
        )
