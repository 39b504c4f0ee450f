"""How a model writes tool calls: its chat template's call format, and a prompt for templates
without tool support. (Parsing calls out of generated text is the HTTP edge's job:
server/tool_calls.py.)

Formats (`tool_call_format`, read from the chat template):
- "hermes": `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`, one block per call
  (Qwen2.5/Qwen3, Hermes, and what the generic prompt below asks for).
- "mistral": `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`.
- "llama3": a bare `{"name": …, "parameters": {…}}` (Llama 3.1+ JSON tool calling).
"""

from __future__ import annotations

import json
from typing import Any, Literal

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_TAG = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"

ToolCallFormat = Literal["hermes", "mistral", "llama3"]

GENERIC_TOOL_PROMPT = """You can call functions. The functions you may call, as JSON schemas:
{tools}

To call a function, answer with nothing but one line per call:
<tool_call>
{{"name": "<function name>", "arguments": {{<arguments as a JSON object>}}}}
</tool_call>
Otherwise answer normally."""


def generic_tool_prompt(tools: list[dict[str, Any]]) -> str:
    """A system prompt describing `tools`, for chat templates that have no tool support."""
    return GENERIC_TOOL_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))


def tool_call_format(chat_template: str | None) -> ToolCallFormat:
    """The call format a chat template writes (templates without tools get the generic prompt,
    which asks for the Hermes form)."""
    template = chat_template or ""
    if OPEN in template or "tools" not in template:
        return "hermes"
    if MISTRAL_TAG in template:
        return "mistral"
    if PYTHON_TAG in template or '"parameters"' in template:
        return "llama3"
    return "hermes"
