"""Body parsers of the formats with notations of their own: gemma4 (`<|"|>`-quoted strings,
bare keys), function_gemma (`<escape>`-quoted strings) and pythonic (Python call syntax) — each
what mlx-lm 0.32's module of that name reads."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from server.tool_formats.calls import (
    ParsedCall,
    Tools,
    literal_or_text,
)

# -- gemma4: call:NAME{key:<|"|>text<|"|>,n:1} -------------------------------------------------

_GEMMA4_QUOTE = '<|"|>'
_GEMMA4_HEAD = re.compile(r"call:([\w-]+)\{")
_GEMMA4_KEY = re.compile(r"(?<=[{,])(\w+):")


def _gemma4_object_end(text: str, start: int) -> int | None:
    """Index just past the `}` that closes the `{` at `start` (strings skipped), or None."""
    depth, position = 0, start
    while position < len(text):
        if text.startswith(_GEMMA4_QUOTE, position):
            close = text.find(_GEMMA4_QUOTE, position + len(_GEMMA4_QUOTE))
            if close < 0:
                return None
            position = close + len(_GEMMA4_QUOTE)
            continue
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return position + 1
        position += 1
    return None


def _gemma4_json(text: str) -> str:
    strings: list[str] = []

    def capture(match: re.Match[str]) -> str:
        strings.append(match.group(1))
        return f"\x00{len(strings) - 1}\x00"

    text = re.sub(r'<\|"\|>(.*?)<\|"\|>', capture, text, flags=re.DOTALL)
    text = _GEMMA4_KEY.sub(r'"\1":', text)
    for index, string in enumerate(strings):
        text = text.replace(f"\x00{index}\x00", json.dumps(string))
    return text


def gemma4(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    calls, position = [], 0
    while (head := _GEMMA4_HEAD.search(text, position)) is not None:
        end = _gemma4_object_end(text, head.end() - 1)
        if end is None:
            position = head.end()
            continue
        try:
            arguments = json.loads(_gemma4_json(text[head.end() - 1 : end]))
        except ValueError:
            return None
        calls.append(ParsedCall(head.group(1), arguments))
        position = end
    return calls or None


# -- function_gemma: call:NAME{key:<escape>text<escape>,n:1} -----------------------------------

_FUNCTION_GEMMA = re.compile(r"call:(\w+)\{(.*?)\}", re.DOTALL)
_ESCAPE = "<escape>"


def function_gemma(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    found = _FUNCTION_GEMMA.findall(text)
    if not found:
        return None
    name, rest = found[0]
    arguments: dict[str, Any] = {}
    try:
        while rest:
            split = rest.index(":")
            key, rest = rest[:split], rest[split + 1 :]
            if rest.startswith(_ESCAPE):
                rest = rest[len(_ESCAPE) :]
                split = rest.index(_ESCAPE)
                arguments[key] = rest[:split]
                rest = rest[split + len(_ESCAPE) + 1 :]
                continue
            split = rest.index(",") if "," in rest else len(rest)
            value, rest = rest[:split], rest[split + 1 :]
            try:
                arguments[key] = json.loads(value)
            except ValueError:
                arguments[key] = value
    except ValueError:
        return None
    return [ParsedCall(name, arguments)]


# -- pythonic: [name(a="x", b=2), other(c=[1, 2])] ---------------------------------------------

_PY_CALL = re.compile(r"\[(?P<name>[\w.]+)\((?P<args>.*?)\)\]", re.DOTALL)
_PY_ARG = re.compile(
    r"""(?P<key>\w+)=(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^,]+))(?:,\s*|$)""",
    re.DOTALL,
)
_JSON_NAMES = {"true": True, "false": False, "null": None}


class _JSONLiterals(ast.NodeTransformer):
    """Templates render nested values as JSON: true/false/null where Python has names."""

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id not in _JSON_NAMES:
            return node
        return ast.copy_location(ast.Constant(_JSON_NAMES[node.id]), node)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        parent = _dotted(node.value)
        return f"{parent}.{node.attr}" if parent else node.attr
    return None


def _python_call(node: ast.expr) -> ParsedCall | None:
    if not isinstance(node, ast.Call) or node.args:
        return None
    name = _dotted(node.func)
    if name is None or any(k.arg is None for k in node.keywords):
        return None
    arguments = {
        str(k.arg): ast.literal_eval(_JSONLiterals().visit(k.value)) for k in node.keywords
    }
    return ParsedCall(name, arguments)


def _python_list(text: str) -> list[ParsedCall] | None:
    start, end = text.find("["), text.rfind("]")
    if start == -1 or end <= start:
        return None
    tree = ast.parse(text[start : end + 1], mode="eval").body
    if not isinstance(tree, ast.List) or not tree.elts:
        return None
    calls = [_python_call(element) for element in tree.elts]
    if any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def pythonic(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    try:
        parsed = _python_list(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        parsed = None
    if parsed is not None:
        return parsed
    match = _PY_CALL.search(text)  # not Python: mlx-lm's regex reading of one call
    if match is None:
        return None
    arguments: dict[str, Any] = {}
    for argument in _PY_ARG.finditer(match.group("args")):
        bare = argument.group("bare")
        quoted = argument.group("dq") if argument.group("dq") is not None else argument.group("sq")
        text = bare.strip() if bare is not None else quoted
        arguments[argument.group("key").strip()] = literal_or_text(text)
    return [ParsedCall(match.group("name"), arguments)]


def pythonic_cut(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    """A list of calls cut after whole calls (`[f(k=1), g()`), as the list it began (None: the
    text is no such list)."""
    try:
        return _python_list(text + "]")
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
