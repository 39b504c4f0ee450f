"""Forced tool calls (`tool_choice` "required" or a named function) as a grammar in the model's
own call format (engines/llm/chat_formats.py), compiled by engines/llm/constrain.py; and, for
`response_format` beside tools the model may call, calls or a JSON answer under the schema.

Formats with a grammar here: json_tools (`<tool_call>` JSON), mistral (`[TOOL_CALLS][…]` or
`[TOOL_CALLS]NAME[ARGS]{…}`, whichever the model takes), llama3 (one bare JSON call),
qwen3_coder, glm47 and minimax_m2 (tagged parameters, in the schema's order, the optional ones
optional: a string is free text up to its closing tag, bounded by `maxLength` when the schema
has one; an enum of strings is one of them; a plain number has no exponent; anything else is
JSON under its schema), kimi_k2 (JSON arguments between its section tokens), harmony (a
`commentary` message to `functions.NAME` with JSON arguments; gpt-oss then ends its turn with
`<|call|>`), pythonic (`[f(k=value)]`, each value JSON, which the parser reads as Python) and
gemma4 (its `<|"|>`-quoted notation: engines/llm/gemma_grammar.py). The others
(function_gemma, longcat, minicpm5, kimi_k3) write values in notations of their own
(`<escape>`-quoted flat values, typed XTML, tagged values) that no schema-to-grammar
translation covers here: a forced call for those models is generated in the json_tools format
instead (`grammar_format`), and the edge parses it in that format.

Invariants: every output the grammar accepts is read back by the format's parser
(server/tool_formats/) as calls of the allowed functions with schema-valid arguments (in the tagged
formats, string values are bounded by `maxLength` and an enum but no other string keyword; gemma4's
notation enforces less: engines/llm/gemma_grammar.py says what; a tool that is not `strict` is held
to all but the keywords the grammar library does not implement: `inline_refs`); markers that are
single tokens of the vocabulary are named as those tokens (`tag_tokens`): a grammar that spells
them as text cannot accept the token the model was trained to emit.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Mapping, Sequence
from typing import Any

from engines.llm.chat_formats import DEFAULT_FORMAT, MARKERS
from engines.llm.constrain import (
    PLAIN_KEYS,
    PLAIN_NUMBERS,
    compact,
    lark_grammar,
    lenient,
    regex_text,
)
from engines.llm.gemma_grammar import argument_list, gemma4_calls

# What `inline_refs` puts at a tool's parameters' root for the grammar library (`rooted`).
_ROOT_KEYS = ("$defs", "x-guidance")
# Nodes `inline_refs` writes before it inlines no more: past it, a definition is referred to
# where it is used, as a recursive one is. Definitions that each use the next twice double the
# schema at each level: 2 KB of them inlined were 69 MB, written in 13 s on the event loop.
INLINED_NODES = 20_000

GRAMMAR_FORMATS = (
    "json_tools", "mistral", "llama3", "qwen3_coder", "glm47", "minimax_m2", "kimi_k2", "harmony",
    "pythonic", "gemma4",
)  # fmt: skip


def grammar_format(tool_format: str, tools: Sequence[Mapping[str, Any]] = ()) -> str:
    """The format a forced call of `tools` by a `tool_format` model is generated (and parsed)
    in. A pythonic call names its function and arguments as Python identifiers (its parser reads
    the call with Python's own grammar): tools named otherwise are forced in the default
    format."""
    if tool_format == "pythonic" and not all(_pythonic_names(tool) for tool in tools):
        return DEFAULT_FORMAT
    return tool_format if tool_format in GRAMMAR_FORMATS else DEFAULT_FORMAT


def _pythonic_names(tool: Mapping[str, Any]) -> bool:
    function = tool["function"]
    names = [function["name"], *((function.get("parameters") or {}).get("properties") or {})]
    return all(name.isidentifier() and not keyword.iskeyword(name) for name in names)


def grammar_tags(tool_format: str, tools: Sequence[Mapping[str, Any]] = ()) -> tuple[str, ...]:
    """The markers the forced-call grammar of `tool_format` writes (to look up as tokens)."""
    return MARKERS.get(grammar_format(tool_format, tools), ())


def tool_call_grammar(
    tools: list[dict[str, Any]],
    forced: str | None,
    parallel: bool,
    tool_format: str = DEFAULT_FORMAT,
    tag_tokens: Mapping[str, int] | None = None,
    answer_schema: dict[str, Any] | None = None,
    untagged: bool = False,
) -> str:
    """Calls in `grammar_format(tool_format)` — one (or, with `parallel`, one or more) of
    `tools`, or only the function named `forced`. `tag_tokens`: the markers that are single
    tokens of the vocabulary, named in the grammar by id. With `answer_schema` (not for
    harmony: `answers_beside_calls`), a JSON answer under it is the alternative to calls, and
    with `untagged` (a json_tools model whose bare call objects the edge reads as calls: small
    models write them so) a bare call object is one more. A function that is not `strict`
    gets a lenient grammar (`inline_refs`)."""
    selected = [
        (i, tool["function"])
        for i, tool in enumerate(tools)
        if forced is None or tool["function"]["name"] == forced
    ]
    functions = [
        (f["name"], inline_refs(f.get("parameters") or {}, f"{i}.", loose=not f.get("strict")))
        for i, f in selected
    ]
    tokens = tag_tokens or {}

    def tag(text: str) -> str:
        return f"<[{tokens[text]}]>" if text in tokens else json.dumps(text)

    fmt = grammar_format(tool_format, tools)
    if fmt in _XML_STYLES:
        calls = _xml_calls(fmt, functions, parallel, tag)
    elif fmt == "kimi_k2":
        calls = _kimi_calls(functions, parallel, tag)
    elif fmt == "harmony":
        calls = _harmony_call(functions, tag)
    elif fmt == "pythonic":
        calls = _python_calls(functions, parallel, tag)
    elif fmt == "gemma4":
        calls = gemma4_calls(functions, parallel, tag)
    else:
        calls = _json_calls(fmt, functions, parallel, tag)
    if answer_schema is not None:
        # A bare call object is read as a call too (json_tools models, untagged on).
        bare = _call_schema(fmt, functions) if untagged and fmt == "json_tools" else None
        calls = _calls_or_answer(calls, answer_schema, bare)
    return lark_grammar(calls)


def inline_refs(
    schema: Mapping[str, Any], namespace: str = "", loose: bool = False
) -> dict[str, Any]:
    """A tool's `parameters` with its local `$ref`s (`#/$defs/X`, `#/definitions/X`: pydantic
    writes nested models so) replaced by what they point at, and the definitions dropped: each
    grammar places the schema (or each of its properties) inside a larger one, where those
    pointers would not resolve. A reference inside its own definition (a recursive model: a
    tree whose children are trees) cannot be inlined: it points at that definition, kept under
    the returned schema's root `$defs` as `{namespace}{$defs or definitions}.{X}` so that
    several tools' definitions can share one root (`rooted`, `_call_schema`). So is every
    definition used once the inlined schema holds `INLINED_NODES` nodes: inlining copies each
    use, and a schema can use a definition a number of times exponential in its size. An empty
    schema is an object. `loose`: made `lenient`, for a tool that is not `strict` (OpenAI's API
    holds only a strict tool's calls to its schema, and refuses there what it cannot hold them
    to)."""
    definitions = {
        f"#/{key}/{name}": (f"{namespace}{key}.{name}", value)
        for key in ("$defs", "definitions")
        for name, value in (schema.get(key) or {}).items()
    }
    kept: dict[str, Any] = {}
    written = 0

    def resolved(node: Any, seen: frozenset[str]) -> Any:
        nonlocal written
        if isinstance(node, list):
            return [resolved(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        written += 1
        pointer = node.get("$ref")
        if isinstance(pointer, str) and pointer in definitions:
            siblings = resolved({k: v for k, v in node.items() if k != "$ref"}, seen)
            name, definition = definitions[pointer]
            if pointer not in seen and written < INLINED_NODES:
                return {**resolved(definition, seen | {pointer}), **siblings}
            if name not in kept:
                kept[name] = {}  # taken before it is resolved: it refers to itself
                kept[name] = resolved(definition, frozenset({pointer}))
            escaped = name.replace("~", "~0").replace("/", "~1")  # a JSON pointer's token
            return {"$ref": f"#/$defs/{escaped}", **siblings}
        return {k: resolved(v, seen) for k, v in node.items() if k not in ("$defs", "definitions")}

    inlined = resolved(dict(schema), frozenset()) or {"type": "object"}
    if kept:
        inlined["$defs"] = kept
    return lenient(inlined) if loose else inlined


def rooted(schema: Any, parameters: Mapping[str, Any]) -> Any:
    """`schema`, a part of a tool's inlined `parameters`, with what `inline_refs` put at their
    root — the definitions their recursive references point at, the grammar options — at its
    own, where the grammar library reads them."""
    shared = {key: parameters[key] for key in _ROOT_KEYS if key in parameters}
    if not shared or not isinstance(schema, dict):
        return schema
    return {**schema, **shared}


def answers_beside_calls(tool_format: str, tools: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a JSON answer can be the alternative to calls in this format: not in harmony,
    whose answers go to another channel than its calls (that model gets JSON only)."""
    return grammar_format(tool_format, tools) != "harmony"


def _calls_or_answer(
    calls: str, answer_schema: dict[str, Any], bare_call: dict[str, Any] | None
) -> str:
    """`calls`' grammar with a JSON answer under `answer_schema` as the alternative (and a
    `bare_call` object, if given): the model calls tools or answers in the schema (OpenAI's
    `response_format` beside `tools`). Each JSON alternative is a rule of its own, its schema
    at its root, so the client's `$ref`s (`#/$defs/...`) resolve as written."""
    renamed, found = re.subn(r"^start:", "tool_calls:", calls, flags=re.MULTILINE)
    assert found == 1, "a call grammar has one start rule"
    alternatives = {"json_answer": answer_schema}
    if bare_call is not None:
        alternatives["bare_call"] = bare_call
    rules = [f"{rule}: %json {json.dumps(compact(shape))}" for rule, shape in alternatives.items()]
    return "\n".join([f"start: tool_calls | {' | '.join(alternatives)}", *rules, renamed])


def _call_schema(fmt: str, functions: list[tuple[str, Any]]) -> dict[str, Any]:
    """One call of one of `functions` as the JSON object the json formats write (the
    functions' kept definitions at its root, each named apart by its namespace; lenient where
    every function is)."""
    arguments_key = "parameters" if fmt == "llama3" else "arguments"
    definitions: dict[str, Any] = {}
    options = []
    for name, parameters in functions:
        definitions.update(parameters.get("$defs") or {})
        arguments = {k: v for k, v in parameters.items() if k not in _ROOT_KEYS}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": name}, arguments_key: arguments},
                "required": ["name", arguments_key],
                "additionalProperties": False,
            }
        )
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    if definitions:
        schema = {**schema, "$defs": definitions}
    if all((parameters.get("x-guidance") or {}).get("lenient") for _, parameters in functions):
        schema = lenient(schema)
    return schema


def _json_calls(fmt: str, functions: list[tuple[str, Any]], parallel: bool, tag: Any) -> str:
    schema = _call_schema(fmt, functions)
    if fmt == "mistral":
        # Either form Mistral's templates write: the model takes the one it was trained on.
        more = '(", " body)*' if parallel else ""
        headers = f"({tag('[TOOL_CALLS]')} header)*" if parallel else ""
        header = " | ".join(
            f"{json.dumps(name)} {tag('[ARGS]')} %json {json.dumps(compact(parameters))}"
            for name, parameters in functions
        )
        calls = f'{tag("[TOOL_CALLS]")} ("[" body {more} "]" | header {headers})\nheader: {header}'
    elif fmt == "llama3":
        calls = "body"  # Llama 3.x writes one bare call
    else:
        # A newline may follow the last call: Qwen writes one before its end-of-turn token.
        more = '("\\n" call)*' if parallel else ""
        call = f'{tag("<tool_call>")} "\\n" body "\\n" {tag("</tool_call>")}'
        calls = f'call {more} "\\n"?\ncall: {call}'
    return f"start: {calls}\nbody: %json {json.dumps(compact(schema))}\n"


# Per XML-like format: (before the name, after it, a parameter's opening with {key}, its
# closing, after the last parameter); as each family's chat template writes them. `_MAY`
# marks a newline some of the family's templates write and others do not (GLM 4.5's and 4.7's).
_MAY = "\x00"
_XML_STYLES = {
    "qwen3_coder": (
        "\n<function=", ">\n", "<parameter={key}>\n", "\n</parameter>\n", "</function>\n"
    ),
    "glm47": ("", _MAY, f"<arg_key>{{key}}</arg_key>{_MAY}<arg_value>", f"</arg_value>{_MAY}", ""),
    "minimax_m2": (
        '<invoke name="', '">\n', '<parameter name="{key}">', "</parameter>\n", "</invoke>\n"
    ),
}  # fmt: skip
_SECTION_TAGS = {
    "qwen3_coder": ("<tool_call>", "</tool_call>"),
    "glm47": ("<tool_call>", "</tool_call>"),
    "minimax_m2": ("<minimax:tool_call>", "</minimax:tool_call>"),
}


def _xml_calls(fmt: str, functions: list[tuple[str, Any]], parallel: bool, tag: Any) -> str:
    before_name, after_name, opening, closing, after_last = _XML_STYLES[fmt]
    rules: list[str] = []
    for f, (name, parameters) in enumerate(functions):
        properties = parameters.get("properties") or {}
        required = set(parameters.get("required") or [])
        items = []
        for p, (key, schema) in enumerate(properties.items()):
            value = _xml_value(f"v{f}_{p}", schema or {}, closing, rules, parameters)
            item = f"{_literal(opening.format(key=key))} {value}"
            items.append(f"({item})" if key in required else f"({item})?")
        body = " ".join(items)
        rules.append(
            f"fn{f}: {_literal(before_name + name + after_name)} {body} {_literal(after_last)}"
        )
    function = " | ".join(f"fn{f}" for f in range(len(functions)))
    start, end = (tag(t) for t in _SECTION_TAGS[fmt])
    if fmt == "minimax_m2":  # one section holds every call
        more = "invoke*" if parallel else ""
        calls = f'{start} "\\n" invoke {more} {end}'
        rules.append(f"invoke: {function}")
    else:
        more = '("\\n" call)*' if parallel else ""
        calls = f"call {more}"
        rules.append(f"call: {start} {function} {end}")
    return "\n".join([f'start: {calls} "\\n"?', *rules]) + "\n"


def _xml_value(
    rule: str, schema: dict[str, Any], closing: str, rules: list[str], parameters: dict[str, Any]
) -> str:
    """A parameter's value (of the function's `parameters`) and its closing text: raw text for
    strings, JSON otherwise."""
    enum = schema.get("enum")
    if schema.get("type") == "string" and enum and all(isinstance(e, str) for e in enum):
        choices = " | ".join(json.dumps(e) for e in enum)
        return f"({choices}) {_literal(closing)}"
    if schema.get("type") == "string":
        limit = schema.get("maxLength")
        repeat = f"{{0,{int(limit)}}}" if isinstance(limit, int) else "*"
        # Lazy: the value ends at the first closing tag (the parser reads it the same way).
        end, may, rest = closing.partition(_MAY)
        rules.append(f"{rule}[lazy]: /(.|\\n){repeat}{regex_text(end)}/")
        return f"{rule} {_literal(may + rest)}" if may else rule
    if set(schema) <= PLAIN_KEYS and schema.get("type") in PLAIN_NUMBERS:
        # The parsers read such a value with float(): no exponent, which could overflow to inf.
        return f"{PLAIN_NUMBERS[schema['type']]} {_literal(closing)}"
    return f"%json {json.dumps(compact(rooted(schema, parameters)))} {_literal(closing)}"


def _literal(text: str) -> str:
    """`text` as a Lark sequence of strings, each `_MAY` an optional newline."""
    pieces = [f"{json.dumps(piece)} " if piece else "" for piece in text.split(_MAY)]
    return '"\\n"? '.join(pieces).strip() or '""'


def _kimi_calls(functions: list[tuple[str, Any]], parallel: bool, tag: Any) -> str:
    calls = [
        f'{tag("<|tool_call_begin|>")} "functions.{name}:" /[0-9]/ '
        f"{tag('<|tool_call_argument_begin|>')} %json {json.dumps(compact(parameters))} "
        f"{tag('<|tool_call_end|>')}"
        for name, parameters in functions
    ]
    more = "call*" if parallel else ""
    return (
        f"start: {tag('<|tool_calls_section_begin|>')} call {more} "
        f"{tag('<|tool_calls_section_end|>')}\ncall: {' | '.join(calls)}\n"
    )


def _python_calls(functions: list[tuple[str, Any]], parallel: bool, tag: Any) -> str:
    """`[f(k=value, …), …]`, each value JSON under its schema (the pythonic parser reads JSON's
    literals too): the required arguments in order, then the optional ones, each optional (with
    none required, an argument only after the one before it)."""
    rules = []
    for f, (name, parameters) in enumerate(functions):
        properties = parameters.get("properties") or {}
        required = set(parameters.get("required") or [])
        ordered = sorted(properties, key=lambda key: key not in required)
        items = [
            f"{json.dumps(key + '=')} {_python_value(properties[key] or {}, parameters)}"
            for key in ordered
        ]
        body = argument_list(items, sum(key in required for key in ordered), '", "')
        rules.append(f'fn{f}: {json.dumps(name + "(")} {body} ")"')
    function = " | ".join(f"fn{f}" for f in range(len(functions)))
    more = '(", " call)*' if parallel else ""
    start, end = tag("<|tool_call_start|>"), tag("<|tool_call_end|>")
    return "\n".join([f'start: {start} "[" call {more} "]" {end}', f"call: {function}", *rules])


def _python_value(schema: dict[str, Any], parameters: dict[str, Any]) -> str:
    if set(schema) <= PLAIN_KEYS and schema.get("type") in PLAIN_NUMBERS:
        return PLAIN_NUMBERS[schema["type"]]  # read by ast: an exponent could overflow to inf
    return f"%json {json.dumps(compact(rooted(schema, parameters)))}"


def _harmony_call(functions: list[tuple[str, Any]], tag: Any) -> str:
    # One call per turn: gpt-oss ends the turn with <|call|> (an end-of-sequence token).
    calls = [
        f'{tag("<|channel|>")} "commentary to=functions.{name} " {tag("<|constrain|>")} "json" '
        f"{tag('<|message|>')} %json {json.dumps(compact(parameters))}"
        for name, parameters in functions
    ]
    return f"start: {' | '.join(calls)}\n"
