"""Tool calls (and, for gpt-oss, reasoning) in each model family's own format, parsed at the
HTTP edge from the text the engine emits. The engine names the format its chat template writes
(`ChatModelInfo.tool_format`, engines/llm/chat_formats.py); `call_parser` gives a fresh
streaming parser for it:
- json_tools and llama3: server/tool_calls.py's `ToolCallParser` (`<tool_call>` JSON, argument
  fragments streamed as generated, plus untagged JSON calls);
- harmony: server/tool_formats/harmony.py (channels: reasoning, content and calls);
- every other format: server/tool_formats/sections.py over its body parser in bodies.py.
All share `feed(text) -> ParsedDeltas`, `finish() -> ParsedDeltas` and `calls`.
"""

from __future__ import annotations

from typing import Any, Protocol

from engines.llm.chat_formats import SECTIONS
from server.tool_calls import ParsedDeltas, ToolCall, ToolCallParser
from server.tool_formats.harmony import HarmonyParser
from server.tool_formats.sections import SectionParser


class CallParser(Protocol):
    @property
    def calls(self) -> list[ToolCall]: ...

    def feed(self, text: str) -> ParsedDeltas: ...

    def finish(self) -> ParsedDeltas: ...


def call_parser(
    tool_format: str,
    schemas: dict[str, dict[str, Any] | None],
    untagged: bool = True,
    single_call: bool = False,
) -> CallParser:
    """A parser for one choice's output in `tool_format` (`schemas`: the request's functions;
    `single_call`: a one-call turn, whose output may end inside a list of calls after its first,
    server/first_call.py)."""
    if tool_format == "harmony":
        return HarmonyParser(schemas)
    if tool_format in SECTIONS and tool_format != "json_tools":
        return SectionParser(tool_format, schemas, untagged, single_call)
    return ToolCallParser(schemas, untagged)
