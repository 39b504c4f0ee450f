"""What every format's body parser returns, and the value readings they share (mlx-lm's
`_deserialize`, and the schema lookups of its typed formats)."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

Tools = list[dict[str, Any]]


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: Any  # what the format held: an object, as a rule
    id: str | None = None  # the model's own id, where the format writes one (kimi_k2, mistral)


def properties_of(name: str, tools: Tools | None) -> dict[str, Any]:
    for tool in tools or []:
        function = tool.get("function") or {}
        if function.get("name") == name:
            return (function.get("parameters") or {}).get("properties") or {}
    return {}


def json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def literal_or_text(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def loose(value: str) -> Any:
    """JSON, else a Python literal, else the text itself."""
    try:
        return json.loads(value)
    except ValueError:
        return literal_or_text(value)


def string_arguments(name: str, tools: Tools | None) -> set[str]:
    return {k for k, v in properties_of(name, tools).items() if (v or {}).get("type") == "string"}
