"""Anthropic-defined client tools: tools whose schema Anthropic defines and whose calls the
client runs (bash, the text editor, memory). A request names one by `type` and `name` alone
(`{"type": "bash_20250124", "name": "bash"}`); Claude knows its input, a local model does not, so
mlxd offers it as a function with the documented input schema. The calls come back as
`tool_use` blocks under the tool's name, which the client runs (the Vercel AI SDK's
`anthropic.tools.bash_20250124`, `textEditor_20250728`, `memory_20250818`; LangChain's
`tools.bash_20250124`; the SDKs' beta tool helpers).

Invariants:
- A type is matched by its family (`bash_`, `text_editor_`, `memory_`) and read for the version
  only where the input differs (`undo_edit` exists before `text_editor_20250429`); an unknown
  later version of a family gets its family's latest schema.
- Server tools (web search, web fetch, code execution, tool search, …) are run by Anthropic and
  computer use needs screenshots; neither is offered (`schema_for` is None).
"""

from __future__ import annotations

from typing import Any

_INTEGER = {"type": "integer"}
_STRING = {"type": "string"}

_BASH = {
    "description": "Run a command in a persistent bash shell. `restart` restarts the shell.",
    "input_schema": {
        "type": "object",
        "properties": {"command": _STRING, "restart": {"type": "boolean"}},
        "required": ["command"],
    },
}


def _editor(commands: list[str]) -> dict[str, Any]:
    return {
        "description": (
            "View, create and edit text files. view: a file with line numbers (view_range "
            "[first, last], 1-based, -1 for the end) or a directory; create: a new file with "
            "file_text; str_replace: replace old_str, which must occur exactly once, by "
            "new_str; insert: insert new_str after line insert_line (0: the start)"
            + ("; undo_edit: undo the last edit of the file" if "undo_edit" in commands else "")
            + "."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "enum": commands},
                "path": _STRING,
                "file_text": _STRING,
                "old_str": _STRING,
                "new_str": _STRING,
                "insert_line": _INTEGER,
                "view_range": {"type": "array", "items": _INTEGER, "minItems": 2, "maxItems": 2},
            },
            "required": ["command", "path"],
        },
    }


_MEMORY = {
    "description": (
        "Your memory directory, /memories, kept across conversations: view (a file or "
        "directory), create (path, file_text), str_replace (path, old_str, new_str), insert "
        "(path, insert_line, insert_text), delete (path), rename (old_path, new_path)."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "command": {
                "type": "string",
                "enum": ["view", "create", "str_replace", "insert", "delete", "rename"],
            },
            "path": _STRING,
            "view_range": {"type": "array", "items": _INTEGER, "minItems": 2, "maxItems": 2},
            "file_text": _STRING,
            "old_str": _STRING,
            "new_str": _STRING,
            "insert_line": _INTEGER,
            "insert_text": _STRING,
            "old_path": _STRING,
            "new_path": _STRING,
        },
        "required": ["command"],
    },
}

# The text editor's versions before this one also had `undo_edit`.
_EDITOR_WITHOUT_UNDO = "text_editor_20250429"


def schema_for(tool_type: str) -> dict[str, Any] | None:
    """`{"description", "input_schema"}` of the client tool of this `type`; None for any type
    that is no Anthropic-defined client tool."""
    if tool_type.startswith("bash_"):
        return _BASH
    if tool_type.startswith("text_editor_"):
        commands = ["view", "create", "str_replace", "insert"]
        return _editor(commands if tool_type >= _EDITOR_WITHOUT_UNDO else [*commands, "undo_edit"])
    if tool_type.startswith("memory_"):
        return _MEMORY
    return None
