"""The calls in one tool-call section's text, per format: what mlx-lm 0.32's
`mlx_lm/tool_parsers/<format>.py` `parse_tool_call(text, tools)` returns, as a list of
`ParsedCall` (tests/unit/test_tool_formats.py checks each against mlx-lm's own module).

A section is the text between the format's start and end markers (engines/llm/chat_formats.py
`SECTIONS`), markers excluded. A function returns None where mlx-lm raises (nothing parses as a
call): the section is then content, never lost. Values are typed by the tool's `parameters`
schema where the format writes them as bare text (qwen3_coder, glm47, minimax_m2, minicpm5,
longcat), exactly as mlx-lm converts them.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Tools = list[dict[str, Any]]


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: Any  # what the format held: an object, as a rule
    id: str | None = None  # the model's own id, where the format writes one (kimi_k2, mistral)


def _properties(name: str, tools: Tools | None) -> dict[str, Any]:
    for tool in tools or []:
        function = tool.get("function") or {}
        if function.get("name") == name:
            return (function.get("parameters") or {}).get("properties") or {}
    return {}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _literal_or_text(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _loose(value: str) -> Any:
    """JSON, else a Python literal, else the text itself."""
    try:
        return json.loads(value)
    except ValueError:
        return _literal_or_text(value)


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
    properties = _properties(name.group(1), tools)
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


def _string_arguments(name: str, tools: Tools | None) -> set[str]:
    return {k for k, v in _properties(name, tools).items() if (v or {}).get("type") == "string"}


def glm47(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    head = _GLM_NAME.search(text)
    if head is None:
        return _glm_json(text, tools)
    name = head.group(1).strip()
    strings = _string_arguments(name, tools)
    arguments: dict[str, Any] = {}
    for match in _GLM_ARG.finditer(text):
        key, value = match.group(1).strip(), match.group(2).strip()
        arguments[key] = value if key in strings else _loose(value)
    return [ParsedCall(name, arguments)]


def _glm_json(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    """GLM's other shape: a JSON call object (mlx-lm's first fallback; its plain-text
    fallbacks, which turn any text into a call, are not followed: such text stays content)."""
    try:
        parsed = json.loads(text.strip())
    except ValueError:
        return None
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
        arguments = _loose(arguments)
    if not isinstance(name, str):
        return None
    if arguments is None:
        return [ParsedCall(name, {})]
    if not isinstance(arguments, dict):
        return None
    strings = _string_arguments(name, tools)
    return [
        ParsedCall(
            name,
            {
                k: (v if isinstance(v, str) else str(v))
                if k in strings
                else (_loose(v) if isinstance(v, str) else v)
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
        properties = _properties(name, tools)
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

_MINICPM_FUNCTION = re.compile(
    r"(?:<function\s+)?(?:name\s*=\s*)?(?P<name>\"[^\"]*\"|'[^']*'|[^\s\"'<>]+)\s*>"
    r"(?P<body>.*?)(?:</function>|$)",
    re.DOTALL,
)
_MINICPM_PARAM = re.compile(
    r"<param\s+name\s*=\s*(?P<name>\"[^\"]*\"|'[^']*'|[^\s\"'<>]+)\s*>(?P<value>.*?)</param>",
    re.DOTALL,
)
_CDATA = re.compile(r"^\s*<!\[CDATA\[(.*?)\]\]>\s*$", re.DOTALL)


def minicpm5(text: str, tools: Tools | None) -> list[ParsedCall] | None:
    calls = []
    for function in _MINICPM_FUNCTION.finditer(text):
        name = _unquote(function.group("name"))
        properties = _properties(name, tools)
        arguments: dict[str, Any] = {}
        for param in _MINICPM_PARAM.finditer(function.group("body")):
            key = _unquote(param.group("name"))
            cdata = _CDATA.match(param.group("value"))
            raw = cdata.group(1) if cdata else param.group("value").strip()
            arguments[key] = _typed_value(raw, _parameter_types(key, properties))
        calls.append(ParsedCall(name, arguments))
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
        calls.append(ParsedCall(name.group(2), _loose(arguments.group(1)), id=name.group(1)))
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
                arguments[attrs["key"]] = _json_or_text(value) if typed else value
            else:
                calls.append(ParsedCall(name, arguments))
            continue
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
    strings = _string_arguments(name, tools)
    arguments = {}
    for key, value in _LONGCAT_ARG.findall(text):
        key, value = key.strip(), value.strip()
        arguments[key] = value if key in strings else _loose(value)
    return [ParsedCall(name, arguments)]


# -- mistral: [{"name": …, "arguments": …}, …] or NAME[ARGS]{…}NAME[ARGS]{…} ---------------------

_MISTRAL_HEADER = re.compile(r"([\w-]+)\s*\[ARGS\]\s*")


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
    while (header := _MISTRAL_HEADER.search(text, position)) is not None:
        try:
            arguments, position = decoder.raw_decode(text, header.end())
        except ValueError:
            return None  # cut short
        calls.append(ParsedCall(header.group(1), arguments))
    return calls or None


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
        arguments[argument.group("key").strip()] = _literal_or_text(text)
    return [ParsedCall(match.group("name"), arguments)]


BODIES: dict[str, Callable[[str, Tools | None], list[ParsedCall] | None]] = {
    "json_tools": json_tools,
    "qwen3_coder": qwen3_coder,
    "glm47": glm47,
    "minimax_m2": minimax_m2,
    "minicpm5": minicpm5,
    "kimi_k2": kimi_k2,
    "kimi_k3": kimi_k3,
    "longcat": longcat,
    "mistral": mistral,
    "gemma4": gemma4,
    "function_gemma": function_gemma,
    "pythonic": pythonic,
}
