"""Body parsers of the formats that write each argument as text inside tags, typed by the
tool's schema: qwen3_coder, glm47 (laguna), minimax_m2, minicpm5, longcat — each what mlx-lm
0.32's module of that name reads, its conversions included."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from server.tool_formats.calls import (
    ParsedCall,
    Tools,
    loose,
    properties_of,
    string_arguments,
)

# -- qwen3_coder: <function=NAME><parameter=KEY>value</parameter>…</function> ---------------

_QWEN_FUNCTION = re.compile(r"<function=(.*?)</function>$", re.DOTALL)
_QWEN_PARAMETER = re.compile(r"<parameter=(.*?)</parameter>", re.DOTALL)
_QWEN_NAME = re.compile(r"\s*([^\s<>]+)>?")
_STRING_TYPES = {"string", "str", "text", "varchar", "char", "enum"}
_BOOL_TYPES = {"boolean", "bool", "binary"}
_INT_PREFIXES = ("int", "uint", "long", "short", "unsigned")


def _qwen_value(value: str, config: dict[str, Any]) -> Any:
    if value.lower() == "null":
        return None
    if not config:
        return value
    if "type" not in config:
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, (dict, list)) else value
    kind = str(config["type"]).strip().lower()
    if kind in _STRING_TYPES:
        return value
    if kind.startswith(_INT_PREFIXES):
        number = float(value)  # ValueError: the call does not parse (as in mlx-lm)
        if number != int(number):
            raise ValueError(f"invalid integer literal {value!r}")
        return int(number)
    if kind.startswith(("num", "float")):
        number = float(value)
        return number if number != int(number) else int(number)
    if kind in _BOOL_TYPES:
        return value.lower() == "true"
    if kind in {"object", "array", "arr"} or kind.startswith(("dict", "list")):
        try:
            return json.loads(value, strict=False)
        except ValueError:
            pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def qwen3_coder(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    found = _QWEN_FUNCTION.findall(text)
    if not found:
        return None
    body = found[0]
    name = _QWEN_NAME.match(body)
    if name is None:
        return None
    properties = properties_of(name.group(1), tools)
    arguments: dict[str, Any] = {}
    try:
        for parameter in _QWEN_PARAMETER.findall(body[name.end() :]):
            key = _QWEN_NAME.match(parameter)
            if key is None:
                continue
            value = parameter[key.end() :]
            value = value.removeprefix("\n").removesuffix("\n")
            arguments[key.group(1)] = _qwen_value(value, properties.get(key.group(1)) or {})
    except (ValueError, OverflowError):
        return None
    return [ParsedCall(name.group(1), arguments)]


# -- glm47 / laguna: NAME<arg_key>K</arg_key><arg_value>V</arg_value>… --------------------------

_GLM_NAME = re.compile(r"^(.*?)<arg_key>", re.DOTALL)
_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>(?:\\n|\s)*<arg_value>(.*?)</arg_value>", re.DOTALL)


def glm47(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    head = _GLM_NAME.search(text)
    if head is None:
        return _glm_json(text, tools)
    name = head.group(1).strip()
    strings = string_arguments(name, tools)
    arguments: dict[str, Any] = {}
    for match in _GLM_ARG.finditer(text):
        key, value = match.group(1).strip(), match.group(2).strip()
        arguments[key] = value if key in strings else loose(value)
    return [ParsedCall(name, arguments)]


def _glm_json(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    """GLM's other shapes: a JSON call object (mlx-lm's first fallback), or a bare name (a call
    without arguments, its plain-text fallback's first case). Its other plain-text readings,
    which turn any text into a call, are not followed: such text stays content."""
    try:
        parsed = json.loads(text.strip())
    except ValueError:
        bare = text.strip()
        return [ParsedCall(bare, {})] if bare and len(bare.split()) == 1 else None
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        return None
    name: Any = None
    arguments: Any = None
    if "name" in parsed and "arguments" in parsed:
        name, arguments = parsed["name"], parsed["arguments"]
    elif "function" in parsed and "arguments" in parsed:
        name, arguments = parsed["function"], parsed["arguments"]
    elif isinstance(parsed.get("tool"), dict):
        name, arguments = parsed["tool"].get("name"), parsed["tool"].get("arguments")
    if isinstance(name, dict):
        arguments = arguments or name.get("arguments")
        name = name.get("name")
    if isinstance(arguments, str):
        arguments = loose(arguments)
    if not isinstance(name, str):
        return None
    if arguments is None:
        return [ParsedCall(name, {})]
    if not isinstance(arguments, dict):
        return None
    strings = string_arguments(name, tools)
    return [
        ParsedCall(
            name,
            {
                k: (v if isinstance(v, str) else str(v))
                if k in strings
                else (loose(v) if isinstance(v, str) else v)
                for k, v in arguments.items()
            },
        )
    ]


# -- minimax_m2: <invoke name=N><parameter name=K>V</parameter>…</invoke> -----------------------

_MINIMAX_INVOKE = re.compile(r"<invoke name=(.*?)</invoke>", re.DOTALL)
_MINIMAX_PARAMETER = re.compile(r"<parameter name=(.*?)</parameter>", re.DOTALL)


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _schema_types(schema: Any) -> list[str]:
    if not isinstance(schema, dict):
        return ["string"]
    types: set[str] = set()
    declared = schema.get("type")
    if isinstance(declared, str):
        types.add(declared)
    elif isinstance(declared, list):
        types.update(t for t in declared if isinstance(t, str))
    for value in schema.get("enum") or [] if isinstance(schema.get("enum"), list) else []:
        types.add(_json_type(value))
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list):
            for choice in schema[key]:
                types.update(_schema_types(choice))
    return list(types) or ["string"]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (str, "string"),
        (list, "array"),
        (dict, "object"),
    ):
        if isinstance(value, kind):
            return name
    return "string"


_TYPE_ORDER = (
    "integer", "int", "number", "float", "boolean", "bool", "object", "array", "string", "str",
    "text",
)  # fmt: skip


def _typed_value(value: str, types: list[str]) -> Any:
    """minimax_m2's conversion: the first of the declared types the text reads as."""
    if value.lower() == "null":
        return None
    declared = {t.lower() for t in types}
    for kind in _TYPE_ORDER:
        if kind not in declared:
            continue
        if kind in ("string", "str", "text"):
            return value
        if kind in ("integer", "int"):
            try:
                return int(value)
            except ValueError:
                continue
        if kind in ("number", "float"):
            try:
                number = float(value)
                return number if number != int(number) else int(number)
            except (ValueError, OverflowError):
                continue
        if kind in ("boolean", "bool"):
            word = value.lower().strip()
            if word in ("true", "1", "yes", "on"):
                return True
            if word in ("false", "0", "no", "off"):
                return False
            continue
        if kind in ("object", "array"):
            try:
                return json.loads(value, strict=False)
            except ValueError:
                pass
            try:
                return ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
    try:
        return json.loads(value)
    except ValueError:
        return value


def _parameter_types(name: str, properties: dict[str, Any]) -> list[str]:
    return _schema_types(properties[name]) if name in properties else ["string"]


def minimax_m2(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    calls = []
    for invoke in _MINIMAX_INVOKE.findall(text):
        head = re.search(r"^([^>]+)", invoke)
        if head is None:
            continue
        name = _unquote(head.group(1))
        properties = properties_of(name, tools)
        arguments: dict[str, Any] = {}
        for parameter in _MINIMAX_PARAMETER.findall(invoke):
            match = re.search(r"^([^>]+)>(.*)", parameter, re.DOTALL)
            if match is None:
                continue
            key = _unquote(match.group(1))
            value = match.group(2).strip().removeprefix("\n").removesuffix("\n")
            arguments[key] = _typed_value(value, _parameter_types(key, properties))
        calls.append(ParsedCall(name, arguments))
    return calls or None


# -- minicpm5: "NAME"><param name="K">V</param>… (markers stripped) ----------------------------

# mlx-lm's pattern, its first line a guard that changes no match: it is not tried inside a run
# of a bare name's characters, where the run's start would match too, but where `name=` may begin
# a quoted or spaced name (else tried at each character of a long run, each try reading to its
# end: 20 KB of one word took 7 s, on the event loop or, through the one-call end watch, the
# engine thread).
_MINICPM_FUNCTION = re.compile(
    r"(?:(?<![^\s\"'<>])|(?=[\s\"'<>])|(?=name(?:\s+=|=[\s\"'])))"
    r"(?:<function\s+)?(?:name\s*=\s*)?(?P<name>\"[^\"]*\"|'[^']*'|[^\s\"'<>]+)\s*>"
    r"(?P<body>.*?)(?:</function>|$)",
    re.DOTALL,
)
_MINICPM_PARAM = re.compile(
    r"<param\s+name\s*=\s*(?P<name>\"[^\"]*\"|'[^']*'|[^\s\"'<>]+)\s*>(?P<value>.*?)</param>",
    re.DOTALL,
)
_PARAM_END = "</param>"
_CDATA = re.compile(r"^\s*<!\[CDATA\[(.*?)\]\]>\s*$", re.DOTALL)


def minicpm5(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    calls = []
    for function in _MINICPM_FUNCTION.finditer(text):
        name = _unquote(function.group("name"))
        properties = properties_of(name, tools)
        arguments: dict[str, Any] = {}
        body = function.group("body")
        # A parameter ends with `</param>`: none is looked for past the last (each unclosed one
        # was read to the end: quadratic in them).
        last = body.rfind(_PARAM_END)
        params = _MINICPM_PARAM.finditer(body, 0, last + len(_PARAM_END)) if last >= 0 else ()
        for param in params:
            key = _unquote(param.group("name"))
            cdata = _CDATA.match(param.group("value"))
            raw = cdata.group(1) if cdata else param.group("value").strip()
            arguments[key] = _typed_value(raw, _parameter_types(key, properties))
        calls.append(ParsedCall(name, arguments))
    return calls or None


# -- longcat: NAME<longcat_arg_key>K</longcat_arg_key><longcat_arg_value>V</…>, or JSON ----------

_LONGCAT_NAME = re.compile(r"^(.*?)<longcat_arg_key>", re.DOTALL)
_LONGCAT_ARG = re.compile(
    r"<longcat_arg_key>(.*?)</longcat_arg_key>(?:\\n|\s)*"
    r"<longcat_arg_value>(.*?)</longcat_arg_value>",
    re.DOTALL,
)


def longcat(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(value, dict) and isinstance(value.get("name"), str):
                return [ParsedCall(value["name"], value.get("arguments", {}))]
            return None
    head = _LONGCAT_NAME.search(text)
    if head is None:
        return None
    name = head.group(1).strip()
    strings = string_arguments(name, tools)
    arguments = {}
    for key, value in _LONGCAT_ARG.findall(text):
        key, value = key.strip(), value.strip()
        arguments[key] = value if key in strings else loose(value)
    return [ParsedCall(name, arguments)]
