"""Where a one-call turn ends: the end watch (engines/types.py `GenerationRequest.end_watch`)
`prepare_chat` hands the engine when the client wants at most one tool call
(`parallel_tool_calls: false`; Messages: `disable_parallel_tool_use`) and no grammar holds the
model to one. The output ends just after the first call, so the calls after it are neither
generated nor counted (the edge, `ChoiceOutput`, would leave them out).

A call ends at its format's marker (engines/llm/chat_formats.py `CALL_ENDS`), or, untagged, at
the end of a bare JSON call object or of the ```json fence holding one (Qwen2.5-Coder writes its
calls so, one object a line, more often than in its tags). A reasoning block the output opens
(or the prompt left open) is passed first: a marker written while thinking ends nothing.

Invariants: runs on the engine thread (pure Python, no MLX); it ends an output only after a
call: its marker, or untagged text that the edge's parser reads as exactly one call. It never
raises on what the model writes (JSON nested too deeply to parse is no call): an exception here
would fail the engine step, and with it every request in the batch.
"""

from __future__ import annotations

import json
import re
from typing import Any

from engines.llm.chat_formats import CALL_ENDS
from server.tool_calls import ToolCallParser

_FENCE = re.compile(r"```(?:json)?[ \t]*\n.*?```", re.DOTALL)


class FirstCallEnd:
    """One choice's watch: fed each piece of its text, the characters of the piece to keep
    where the first call ends in it (None: go on). `schemas`: the request's functions, for
    untagged calls (None: the model's untagged calls are not read)."""

    def __init__(
        self,
        tool_format: str,
        schemas: dict[str, dict[str, Any] | None] | None,
        reasoning: tuple[str, str] | None,
        think_opened: bool,
    ) -> None:
        self._marker = CALL_ENDS.get(tool_format)
        self._schemas = schemas
        self._reasoning = reasoning
        self._thinking = think_opened  # inside the reasoning block (known open)
        self._text = ""
        self._start = 0  # where calls may begin: after the reasoning block

    def __call__(self, piece: str) -> int | None:
        before = len(self._text)
        self._text += piece
        if not self._past_reasoning():
            return None
        end = self._tagged_end(before)
        if end is None and ("}" in piece or "`" in piece):
            end = self._untagged_end()
        return end - before if end is not None and end > before else None

    def _past_reasoning(self) -> bool:
        if self._reasoning is None:
            return True
        opening, closing = self._reasoning
        if not self._thinking:
            head = self._text.lstrip()
            if opening.startswith(head):
                return False  # it may still open one
            if not head.startswith(opening):
                self._reasoning = None
                return True
            self._thinking = True
        close = self._text.find(closing)
        if close < 0:
            return False
        self._start, self._reasoning = close + len(closing), None
        return True

    def _tagged_end(self, before: int) -> int | None:
        if self._marker is None:
            return None
        found = self._text.find(self._marker, max(self._start, before - len(self._marker) + 1))
        return None if found < 0 else found + len(self._marker)

    def _untagged_end(self) -> int | None:
        if self._schemas is None:
            return None
        head = self._text[self._start :].lstrip()
        offset = len(self._text) - len(head)
        if head.startswith("{"):
            try:
                _, length = json.JSONDecoder().raw_decode(head)
            except ValueError:
                return None
            except RecursionError:  # nested deeper than the parser goes: no call the edge reads
                self._schemas = None
                return None
        elif (fence := _FENCE.match(head)) is not None:
            length = fence.end()
        else:
            return None
        parser = ToolCallParser(self._schemas)
        parser.feed(head[:length])
        if parser.finish_untagged() is None or len(parser.calls) != 1:  # (not a tagged call in it)
            self._schemas = None  # the output's first object (or fence) is no single call
            return None
        return offset + length
