"""Tool-call tags and the prompt for templates without tool support, which asks for the
json_tools form `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`. Which format a
model writes is read at load (engines/llm/chat_formats.py); parsing calls out of generated text
is the HTTP edge's job (server/tool_formats/).
"""

from __future__ import annotations

import json
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_TAG = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"

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
