"""Deferred tools keep the prompt's prefix across a tool search, on real tokenizers: Claude Code's
session around its ToolSearch (captured: the model loads WebFetch, calls it, then Read) renders
to prompts each of which starts with the one before and the model's reply, token for token, as
the prefix cache needs, whatever the client does to the loaded tool in `tools` afterwards.

SmolLM2's tokenizer (the embedded model's; its template has no tools, so mlxd describes them in a
system message) and Qwen2.5-Coder's (opt-in, MLXD_OPTIN=1: its template writes them itself).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from engines.llm.templates import render_chat
from server.chat_pipeline import listed_tools, template_inputs
from server.schemas.anthropic import MessagesRequest
from server.schemas.chat import ChatCompletionRequest
from tests.engines.test_system_turns import QWEN, SMOLLM2_NAME, common_prefix, tokenizer

CAPTURE = json.loads(
    (Path(__file__).parents[1] / "unit" / "claude_code_2_1_332_tool_search_turns.json").read_text()
)
MODELS = [SMOLLM2_NAME, QWEN]


def turn(n: int, tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Turn `n`'s body as Claude Code sent it (`tools` in place of its tools if given)."""
    sent = CAPTURE["turns"][n]
    offered = [CAPTURE["tools"][name] for name in sent["tools"]] if tools is None else tools
    return {**CAPTURE["common"], "messages": sent["messages"], "tools": offered}


def prompt(tok: Any, body: dict[str, Any]) -> str:
    """The prompt `/v1/messages` renders for `body` (as prepare_chat does)."""
    request = MessagesRequest.model_validate(body)
    chat = ChatCompletionRequest.model_validate(request.chat_body())
    tools, messages = template_inputs(chat)
    listed = listed_tools(tools, request.deferred_tools())
    return render_chat(tok, messages, listed, chat.template_kwargs())


def reply(n: int) -> str:
    """The model's output that turn `n + 1` carries back: its tool call as the model writes it
    (the Hermes form both prompts ask for)."""
    (call,) = [b for b in CAPTURE["turns"][n + 1]["messages"][-2]["content"] if "input" in b]
    head = json.dumps({"name": call["name"], "arguments": call["input"]}, ensure_ascii=False)
    return f"<tool_call>\n{head}\n</tool_call>"


@pytest.mark.parametrize("name", MODELS)
def test_each_turn_extends_the_one_before_with_the_reply(name: str) -> None:
    tok = tokenizer(name)
    turns = len(CAPTURE["turns"])
    prompts = [prompt(tok, turn(n)) for n in range(turns)]
    assert "WebFetch" not in CAPTURE["turns"][0]["tools"]  # loaded by turn 1, in every later
    assert all("WebFetch" in CAPTURE["turns"][n]["tools"] for n in range(1, turns))
    for n, (before, after) in enumerate(itertools.pairwise(prompts)):
        assert after.startswith(before + reply(n))
        ids_before = tok.encode(before + reply(n), add_special_tokens=False)
        ids_after = tok.encode(after, add_special_tokens=False)
        assert common_prefix(ids_before, ids_after) >= len(ids_before) - 1  # the seam may merge


def tools_block(text: str) -> str:
    """The prompt up to its first user turn: the system prompt and the tools block."""
    return text[: text.index("<|im_start|>user")]


@pytest.mark.parametrize("name", MODELS)
def test_a_deferred_tool_is_defined_where_it_was_loaded(name: str) -> None:
    tok = tokenizer(name)
    text = prompt(tok, turn(3))
    listed = [
        t for t in CAPTURE["turns"][3]["tools"] if not CAPTURE["tools"][t].get("defer_loading")
    ]
    assert "ToolSearch" in listed and len(listed) == 11
    for tool in listed:
        assert f'"name": "{tool}"' in tools_block(text)
    for deferred in ("WebFetch", "DeferredToolPlaceholder"):
        assert f'"name": "{deferred}"' not in tools_block(text)
    assert "DeferredToolPlaceholder" not in text
    # Once, in the tool search's result, as the tools block writes a tool.
    (loaded,) = re.finditer(r'Tool loaded: WebFetch\n\{"type": "function", "function": \{', text)
    assert text.count('"name": "WebFetch", "description"') == 1
    assert text.index("select:WebFetch") < loaded.start()
    description = json.dumps(CAPTURE["tools"]["WebFetch"]["description"], ensure_ascii=False)
    assert description in text[loaded.start() :]


def flipped(changes: str) -> list[dict[str, Any]]:
    """Turn 3's tools after a client's change to the loaded tool (or to all)."""
    tools = [dict(CAPTURE["tools"][name]) for name in CAPTURE["turns"][3]["tools"]]
    (webfetch,) = [tool for tool in tools if tool["name"] == "WebFetch"]
    if changes == "flag dropped":
        del webfetch["defer_loading"]
    elif changes == "flag false, cache_control, strict":
        webfetch.update(defer_loading=False, cache_control={"type": "ephemeral"}, strict=True)
    elif changes == "moved last":
        tools = [tool for tool in tools if tool is not webfetch] + [webfetch]
    elif changes == "reversed":
        tools.reverse()
    return tools


@pytest.mark.parametrize(
    "changes", ["flag dropped", "flag false, cache_control, strict", "moved last", "reversed"]
)
@pytest.mark.parametrize("name", MODELS)
def test_the_loaded_tool_renders_the_same_whatever_the_client_does_to_it(
    name: str, changes: str
) -> None:
    tok = tokenizer(name)
    if changes == "reversed":  # the top block follows the array's order; the loaded tool not
        as_sent = prompt(tok, turn(3))
        loaded = as_sent[as_sent.index("Tool loaded: WebFetch") :]
        assert prompt(tok, turn(3, flipped(changes))).endswith(loaded)
        return
    assert prompt(tok, turn(3, flipped(changes))) == prompt(tok, turn(3))
