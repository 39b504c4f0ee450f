"""Deferred tools of the Messages API (`defer_loading`, the tool-search beta Claude Code uses):
which of a request's tools stay out of the prompt's tools block, and what a `tool_reference` (a
tool search's find, in a `tool_result`) reads as.

As in Anthropic's API, a deferred tool is not in the context until a tool search loads it: the
tools block the chat template writes at the top of the prompt holds the other tools only, and
the first `tool_reference` to a deferred tool reads as that tool's definition, where the
reference is. Claude Code adds the loaded tool to `tools` on its next turn (sorted among the
others); written into the top block, it changed the prompt from there on, and the prefix cache
served nothing past it (~11k tokens of Claude Code's prompt prefilled again, each time).

Invariants (they keep turn k+1's prompt an extension of turn k's):
- The top block is the offered tools less the deferred ones: those with `defer_loading`, and any
  a `tool_reference` anywhere in the conversation names, whatever its flag on this turn (a
  client may drop the flag once the tool is loaded). Where that would leave no tool in the
  block, none is deferred: the model would be shown no tool, and most templates would not say
  how to call one. A deferred tool a `tool_choice` forces before any reference loads it is in
  the block for that request (the model is made to call it: it is shown what it is; that
  request's prompt then differs from the top block on).
- A definition is the tool's name, description and input schema as the chat template receives
  them (`{"type": "function", "function": {...}}`), in JSON as templates' `tojson` writes it
  (characters as they are): the tool's place in `tools` and its other options
  (`defer_loading`, `cache_control`, `strict`) change nothing in it.
- It is given once, at the conversation's first reference to the tool; a later reference, or one
  to a tool that is not deferred (or not offered), reads as the line `Tool loaded: NAME`.
- Deferred tools are the request's tools everywhere else: a forced `tool_choice`, the grammar,
  the tool-call parser and argument validation know every offered tool (as Anthropic builds its
  grammars from the whole tool set).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any


def kept_out(offered: Mapping[str, bool], referenced: Collection[str]) -> frozenset[str]:
    """The names of the tools kept out of the top block, of `offered` (name → `defer_loading`)
    and the names the conversation's `tool_reference` blocks give."""
    deferred = frozenset(name for name, flag in offered.items() if flag or name in referenced)
    return deferred if len(deferred) < len(offered) else frozenset()


def definition(chat_tool: dict[str, Any]) -> str:
    """A deferred tool's definition as the model reads it where it was loaded."""
    function = chat_tool["function"]
    shown = {key: function[key] for key in ("name", "description", "parameters") if key in function}
    return json.dumps({"type": "function", "function": shown}, ensure_ascii=False)


class ToolLoads:
    """What each `tool_reference` of one rendering of a conversation reads as, in order: the
    first to a deferred tool its definition, the others a line naming the tool."""

    def __init__(self, definitions: Mapping[str, str] | None = None) -> None:
        self._definitions = dict(definitions or {})

    def text(self, name: str) -> str:
        line = f"Tool loaded: {name}"
        found = self._definitions.pop(name, None)
        return line if found is None else f"{line}\n{found}"
