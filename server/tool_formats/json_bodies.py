"""Body parsers of the formats whose calls are JSON (or JSON-like) inside markup: json_tools,
mistral, kimi_k2, kimi_k3 — each what mlx-lm 0.32's module of that name reads
(server/tool_formats/bodies.py says how they are used)."""

from __future__ import annotations

import json
import re
from typing import Any

from server.tool_formats.calls import (
    ParsedCall,
    Tools,
    json_or_text,
    loose,
)


def json_tools(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    try:
        value = json.loads(text.strip())
    except ValueError:
        return None
    values = value if isinstance(value, list) else [value]
    calls = []
    for call in values:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        calls.append(ParsedCall(call["name"], call.get("arguments", {})))
    return calls or None


# -- kimi_k2: <|tool_call_begin|>functions.N:0<|tool_call_argument_begin|>{…}<|tool_call_end|> --

_KIMI_CALL = re.compile(r"<\|tool_call_begin\|>(.*?)<\|tool_call_end\|>", re.DOTALL)
_KIMI_NAME = re.compile(
    r"^\s*((?:functions\.)?(.+?):\d+)\s*<\|tool_call_argument_begin\|>", re.DOTALL
)
_KIMI_ARGUMENTS = re.compile(r"<\|tool_call_argument_begin\|>\s*(.*)\s*", re.DOTALL)


def kimi_k2(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    calls = []
    for call in _KIMI_CALL.findall(text) or [text]:
        name = _KIMI_NAME.search(call)
        arguments = _KIMI_ARGUMENTS.search(call)
        if name is None or arguments is None:
            return None
        calls.append(ParsedCall(name.group(2), loose(arguments.group(1)), id=name.group(1)))
    return calls


# -- kimi_k3: <|open|>call tool="N"<|sep|><|open|>argument key="K"…<|sep|>V<|close|>argument… --

_K3_CALL = re.compile(
    r"<\|open\|>call(?P<attrs>(?:(?!<\|sep\|>).)*)<\|sep\|>(?P<body>.*?)<\|close\|>call<\|sep\|>",
    re.DOTALL,
)
_K3_ARGUMENT = re.compile(
    r"<\|open\|>argument(?P<attrs>(?:(?!<\|sep\|>).)*)<\|sep\|>"
    r"(?P<value>.*?)<\|close\|>argument<\|sep\|>",
    re.DOTALL,
)
_K3_JSON = re.compile(
    r"<\|open\|>json(?:(?!<\|sep\|>).)*<\|sep\|>(?P<value>.*?)<\|close\|>json<\|sep\|>",
    re.DOTALL,
)
_K3_ATTR = re.compile(r'(\w+)="((?:[^"])*)"')


def _k3_attrs(text: str) -> dict[str, str]:
    return {k: v.replace("&quot;", '"').replace("&amp;", "&") for k, v in _K3_ATTR.findall(text)}


def kimi_k3(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    calls = []
    for match in _K3_CALL.finditer(text):
        name = _k3_attrs(match.group("attrs")).get("tool")
        if not name:
            continue
        body = match.group("body")
        block = _K3_JSON.search(body)
        if block is not None:
            try:
                arguments: Any = json.loads(block.group("value"))
            except ValueError:
                continue
            if not isinstance(arguments, dict):
                continue
        else:
            arguments = {}
            for argument in _K3_ARGUMENT.finditer(body):
                attrs = _k3_attrs(argument.group("attrs"))
                if "key" not in attrs:
                    break
                value = argument.group("value")
                typed = attrs.get("type", "string") != "string"
                arguments[attrs["key"]] = json_or_text(value) if typed else value
            else:
                calls.append(ParsedCall(name, arguments))
            continue
        calls.append(ParsedCall(name, arguments))
    return calls or None


# -- mistral: [{"name": …, "arguments": …}, …] or NAME[ARGS]{…}NAME[ARGS]{…} ---------------------

_MISTRAL_HEADER = re.compile(r"([\w-]+)\s*\[ARGS\]\s*")
# The same, beginning only where a name can (not inside a run of its characters): searched for
# alone, the header was tried at every character of a long run, each try reading to the run's
# end (quadratic: 50 KB of one word took 40 s, on the event loop or the engine thread).
_MISTRAL_HEADER_START = re.compile(r"(?<![\w-])([\w-]+)\s*\[ARGS\]\s*")


def mistral(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, list) and payload:
        calls = []
        for call in payload:
            name = call.get("name") if isinstance(call, dict) else None
            arguments = call.get("arguments", {}) if isinstance(call, dict) else None
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    arguments = None
            if not isinstance(name, str) or not isinstance(arguments, dict):
                return None  # JSON that is not calls: never read as the header form
            call_id = call.get("id")
            calls.append(ParsedCall(name, arguments, call_id if isinstance(call_id, str) else None))
        return calls
    decoder = json.JSONDecoder()
    calls, position = [], 0
    while (header := _mistral_header(text, position)) is not None:
        try:
            arguments, position = decoder.raw_decode(text, header.end())
        except ValueError:
            return None  # cut short
        calls.append(ParsedCall(header.group(1), arguments))
    return calls or None


def _mistral_header(text: str, position: int) -> re.Match[str] | None:
    """`_MISTRAL_HEADER.search(text, position)`, in linear time: a match found later than
    `position` begins a run of name characters (from the run's start it would match too)."""
    return _MISTRAL_HEADER.match(text, position) or _MISTRAL_HEADER_START.search(text, position)


def mistral_cut(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    """A list of calls cut after whole calls (`[{…}, {…}`), as the list it began (None: the text
    is no such list)."""
    closed = text.rstrip() + "]"
    try:
        value = json.loads(closed)
    except ValueError:
        return None
    return mistral(closed, tools) if isinstance(value, list) else None
