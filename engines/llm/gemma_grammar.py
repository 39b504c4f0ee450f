"""Gemma 4's call notation as a grammar: `<|tool_call>call:NAME{key:value,…}<tool_call|>`, where
a value is a string between `<|"|>` quotes, a number, `true`/`false`/`null`, a `{…}` object
with bare keys or a `[…]` list — JSON's values in Gemma's spelling, read back by the gemma4
parser (server/tool_formats/notation_bodies.py), which turns them into JSON.

A function's `parameters` schema becomes that notation: properties in the schema's order, the
required ones first and the optional ones optional; strings free text between the quotes
(bounded by `maxLength`) or one of an enum; numbers without an exponent; `anyOf`/`oneOf` and
type lists as alternatives; a part the schema leaves open (no type) any value. Not enforced:
numeric bounds, string patterns and lengths other than `maxLength`, array lengths, and keys
that are not word characters (the parser's notation has no quoting for them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from engines.llm.constrain import PLAIN_NUMBERS, regex_text

Tag = Callable[[str], str]  # a marker as grammar: its token when it is one, else its text

_QUOTE = '<|"|>'
_KEY = re.compile(r"^\w+$")


class _Rules:
    """The rules of one grammar, named in order."""

    def __init__(self, tag: Tag) -> None:
        self.quote = tag(_QUOTE)
        # A quote that is not one token ends a string's lexeme itself (lazy: at its first).
        self.text_quote = not self.quote.startswith("<[")
        self.lines: list[str] = []

    def add(self, body: str) -> str:
        name = f"g{len(self.lines)}"
        self.lines.append(f"{name}: {body}")
        return name

    def string(self, limit: Any = None) -> str:
        repeat = f"{{0,{int(limit)}}}" if isinstance(limit, int) else "*"
        if self.text_quote:
            return self.add(f"{self.quote} /(.|\\n){repeat}{regex_text(_QUOTE)}/")
        return self.add(f"{self.quote} /(.|\\n){repeat}/ {self.quote}")


def gemma4_calls(functions: list[tuple[str, Any]], parallel: bool, tag: Tag) -> str:
    rules = _Rules(tag)
    any_value = _any_value(rules)
    calls = [
        f"{json.dumps('call:' + name)} {_value(parameters, rules, any_value)}"
        for name, parameters in functions
    ]
    call = rules.add(" | ".join(calls))
    more = f"({tag('<|tool_call>')} {call} {tag('<tool_call|>')})*" if parallel else ""
    start = f"start: {tag('<|tool_call>')} {call} {tag('<tool_call|>')} {more}"
    return "\n".join([start, *rules.lines]) + "\n"


def _any_value(rules: _Rules) -> str:
    """Any value of the notation (a part of a schema that says nothing of its type)."""
    value = "gany"
    scalars = f'{rules.string()} | {PLAIN_NUMBERS["number"]} | "true" | "false" | "null"'
    lists = f'"[" ({value} ("," {value})*)? "]"'
    rules.lines.append(f"{value}: {scalars} | {_open_object(value)} | {lists}")
    return value


def _value(schema: Any, rules: _Rules, any_value: str) -> str:
    if not isinstance(schema, dict):
        return any_value
    choices = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(choices, list) and choices:
        return "(" + " | ".join(_value(choice, rules, any_value) for choice in choices) + ")"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return "(" + " | ".join(_literal(value, rules) for value in schema["enum"]) + ")"
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        return "(" + " | ".join(_value({**schema, "type": k}, rules, any_value) for k in kind) + ")"
    if kind == "string":
        return rules.string(schema.get("maxLength"))
    if kind in PLAIN_NUMBERS:
        return PLAIN_NUMBERS[kind]
    if kind == "boolean":
        return '("true" | "false")'
    if kind == "null":
        return '"null"'
    if kind == "array":
        item = _value(schema.get("items"), rules, any_value)
        return f'"[" ({item} ("," {item})*)? "]"'
    if kind == "object" or "properties" in schema:
        return _object(schema, rules, any_value)
    return any_value


def _object(schema: dict[str, Any], rules: _Rules, any_value: str) -> str:
    properties = {k: v for k, v in (schema.get("properties") or {}).items() if _KEY.match(k)}
    if not properties:
        return _open_object(any_value)
    required = set(schema.get("required") or [])
    ordered = sorted(properties, key=lambda key: key not in required)
    items = [
        f"{json.dumps(key + ':')} {_value(properties[key], rules, any_value)}" for key in ordered
    ]
    body = argument_list(items, sum(key in required for key in ordered), '","')
    return f'"{{" {body} "}}"'


def argument_list(items: list[str], needed: int, separator: str) -> str:
    """Lark for `items` in their order, joined by `separator` (a Lark literal): the first
    `needed` always present, each later one optional and only after the one before it (so with
    none needed, the list is empty or starts with the first item)."""
    if not items:
        return ""
    optional = "".join(f" ({separator} {item})?" for item in items[max(needed, 1) :])
    if needed:
        return f" {separator} ".join(items[:needed]) + optional
    return f"({items[0]}{optional})?"


def _open_object(any_value: str) -> str:
    key = '/[A-Za-z_][A-Za-z0-9_]*/ ":"'
    return f'"{{" ({key} {any_value} ("," {key} {any_value})*)? "}}"'


def _literal(value: Any, rules: _Rules) -> str:
    if isinstance(value, str):
        if rules.text_quote:
            return json.dumps(_QUOTE + value + _QUOTE)
        return f"{rules.quote} {json.dumps(value)} {rules.quote}"
    return json.dumps(json.dumps(value))
