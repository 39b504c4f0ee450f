"""Tool calls in generated text: a streaming parser that turns
`<tool_call>{"name": …, "arguments": {…}}</tool_call>` (Hermes/Qwen style, also what the generic
tool prompt asks for) into content and tool-call deltas.

Untagged calls: an output that is nothing but calls written without the tags — bare JSON
`{"name": …, "arguments"|"parameters": {…}}`, one or several, or a list (Llama 3.x style, and
what small models often write instead), the same inside one ```json fence, or Mistral's
`[TOOL_CALLS][{…}]` — is recognised too. Such output (its first character `{`, `[` or a fence,
after `<|python_tag|>` or `[TOOL_CALLS]` if present) is held back, and becomes calls only if
every call names a known function and its arguments validate against that function's
parameters schema (its regular expressions unchecked: see `_PATTERN_PROPERTIES`). It is held
only while it may still be such calls (server/untagged.py `UntaggedWatch`): as soon as it
cannot — a whole JSON value that is no call, text after one, a "name" of no known function —
what was held is let go and the output streams on as text, in which tagged calls are read as
anywhere; at the end, held output that is not calls is read as text the same way.
Text that merely contains JSON is content.

Invariants of `ToolCallParser`:
- Fed text in any chunking, it emits the same content and the same tool calls (the pieces may
  differ; their concatenations do not).
- Markup never leaks into content: text that might be the start of `<tool_call>` is held back
  until it is known not to be. Whitespace between or after calls is no content either.
- A call's argument fragments concatenate to exactly the model's JSON text of `arguments` (a
  call written out again — untagged, `arguments` before `name`, or arguments written as a JSON
  string holding the object, which are sent whole when the call closes — is the same JSON with
  the model's characters, never `\\u` escapes), and end where that object ends (members the
  model writes after it are no part); a call's `name` is sent once, in its first delta, with
  its id (its first "name", and its first "arguments", where the model wrote two).
- A tagged call is a call once its head `{"name": "…", "arguments":` is whole, its name a JSON
  string: streamed, its name goes out then, and a client cannot be told to forget a tool-call
  delta (OpenAI's and Anthropic's streams have no such event), so read whole the same text is
  that call too, whatever follows. Its arguments are then the model's text, parsed or not: the
  object where it closes, else what was written up to the call's closing brace (the edge takes
  them as a call cut short's: no JSON, chat's `finish_reason` stays "stop"; no object,
  Messages' `input` is `{}`). Holding the name until the call parses would stream nothing of a
  well-formed call (an agent's file write) before it ends. A tagged call without a whole head
  that does not parse as `{"name": str, "arguments": object}` is returned as content, and so
  is one nested deeper than a request body may be (server/body.py `MAX_JSON_DEPTH`): the
  parser never raises on what the model writes. Arguments of untagged calls are checked
  against the function's schema without fetching anything (a `$ref` to a URL is not followed),
  without running the client's regular expressions (`pattern`, `patternProperties`), and
  without comparing every pair of items (`uniqueItems` hashes each item once).
- JSON is read as `json.loads(strict=False)` reads it: raw control characters inside strings
  (a file's lines, as small models write them) spoil no call. The arguments keep them here;
  server/chat_output.py escapes them for every API (server/strict_strings.py).
- Cheap per piece: a call being written is read incrementally (server/tagged_call.py), and the
  buffered output grows in place, so a long call costs no more per token than a short one.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import jsonschema
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.exceptions import Unresolvable

from engines.llm.tools import CLOSE, MISTRAL_TAG, OPEN, PYTHON_TAG
from server.body import MAX_JSON_DEPTH, nests_deeper
from server.tagged_call import Arguments, Head, head_end
from server.untagged import UntaggedWatch, ValueEnd

# `$ref`s resolve within the client's schema: a URL it names is never fetched (jsonschema's
# default registry would fetch it, from the event loop or the engine thread).
_NOTHING_FETCHED: Registry[Any] = Registry()
# A client's regular expressions are not run on the model's text: Python's `re` backtracks
# (holding the GIL), so a pattern such as `^(a+)+$` and text the prompt asks for took
# exponential time, on the event loop or the engine thread (server/first_call.py). `pattern` is
# not checked; a schema with `patternProperties` (which `additionalProperties` and
# `unevaluatedProperties` match keys against) is not checked at all: the name decides.
_PATTERN_PROPERTIES = '"patternProperties":'


@functools.cache
def _checked_safely(validator: type[Validator]) -> type[Validator]:
    keywords = {"pattern": _unchecked, "uniqueItems": _unique_items}
    return cast(type[Validator], jsonschema.validators.extend(validator, keywords))


def _unchecked(*_: Any) -> None:
    return None


def _unique_items(
    validator: Validator, unique: Any, instance: Any, _: Any
) -> Iterator[jsonschema.ValidationError]:
    """`uniqueItems`, each item hashed once: jsonschema compares every pair of items that do
    not sort (objects, lists, mixed types), so a list of 10k objects the model wrote took
    minutes, on the event loop or the engine thread."""
    if unique and validator.is_type(instance, "array"):
        keys = [_json_key(item) for item in instance]
        if len(set(keys)) < len(keys):
            yield jsonschema.ValidationError("has non-unique elements")


def _json_key(value: Any) -> Any:
    """A key for a decoded JSON value, equal where JSON Schema holds the values equal: `1` and
    `1.0` are (Python's hash agrees), `true` and `1` are not, an object's key order does not
    count."""
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, value)
    if isinstance(value, list):
        return (3, tuple(_json_key(item) for item in value))
    if isinstance(value, dict):
        return (4, frozenset((key, _json_key(item)) for key, item in value.items()))
    return (0, value)  # a string, null


_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(.*?)\n?```$", re.DOTALL)
_BARE_PREFIXES = (PYTHON_TAG, MISTRAL_TAG)
_FENCE_OPENERS = ("```json", "```\n", "```{", "```[")


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None  # set on a call's first delta only
    name: str | None = None  # likewise
    arguments: str = ""


@dataclass
class Thought:
    """Reasoning text, in formats that carry reasoning too (gpt-oss's harmony)."""

    text: str


@dataclass
class ParsedDeltas:
    """What one piece of output parsed into. `pieces` keeps content text, reasoning and call
    deltas in the order the model wrote them, so a text (or reasoning) after a call stays after
    it, however the output was cut into pieces (streamed token by token, or whole)."""

    pieces: list[str | Thought | ToolCallDelta] = field(default_factory=list)

    @property
    def content(self) -> str:
        return "".join(piece for piece in self.pieces if isinstance(piece, str))

    @property
    def reasoning(self) -> str:
        return "".join(piece.text for piece in self.pieces if isinstance(piece, Thought))

    def add_reasoning(self, text: str) -> None:
        if not text:
            return
        if self.pieces and isinstance(self.pieces[-1], Thought):
            self.pieces[-1].text += text
        else:
            self.pieces.append(Thought(text))

    @property
    def calls(self) -> list[ToolCallDelta]:
        return [piece for piece in self.pieces if isinstance(piece, ToolCallDelta)]

    def add_text(self, text: str) -> None:
        if not text:
            return
        if self.pieces and isinstance(self.pieces[-1], str):
            self.pieces[-1] += text
        else:
            self.pieces.append(text)

    def add_call(self, *deltas: ToolCallDelta) -> None:
        self.pieces += deltas


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


def _strip_bare_prefix(text: str) -> str:
    text = text.lstrip()
    for prefix in _BARE_PREFIXES:
        text = text.removeprefix(prefix)
    return text.lstrip()


def may_be_untagged(head: str) -> bool | None:
    """Whether output starting with `head` may be an untagged call (None: cannot tell yet)."""
    if any(p.startswith(head) for p in _BARE_PREFIXES + _FENCE_OPENERS):
        return None
    return head[0] in "{[" or head.startswith(_FENCE_OPENERS)


class ToolCallParser:
    """`schemas`: each known function's parameters schema (None: any object). Untagged calls
    are recognised only for these functions, and only when `untagged` is on."""

    def __init__(
        self, schemas: dict[str, dict[str, Any] | None] | None = None, untagged: bool = True
    ) -> None:
        self._schemas = schemas or {}
        self._untagged = untagged and bool(self._schemas)
        # start → text | bare (the output may be untagged calls: held back) → text (it is not)
        self._mode = "start"
        self._watch: UntaggedWatch | None = None  # in bare mode
        self._buffer = ""  # text not yet classified
        self._lead_end = 0  # (start mode) the buffer up to here: only whitespace and prefixes
        self._prefixed = False  # ... a prefix among them
        self._in_call = False
        self._after_call = False  # nothing but whitespace was written since the last call
        self._blank = 0  # (text mode, after a call) the buffer up to here: only whitespace
        self._calls: list[ToolCall] = []
        self._new_call()

    def _new_call(self) -> None:
        """The open call's state, read as its text (the buffer, from after `<tool_call>`)
        grows (server/tagged_call.py)."""
        self._close_from = 0  # where `</tool_call>` may begin, not found before
        self._head = Head()
        self._nameless = False  # its head is whole but the name no JSON string: no call
        self._current_id: str | None = None  # the open call's id, once its name was sent
        self._arguments: Arguments | None = None  # its arguments object, once it begins
        self._streamed_arguments = 0  # characters of the open call's arguments sent

    @property
    def calls(self) -> list[ToolCall]:
        return list(self._calls)

    @property
    def holding(self) -> bool:
        """Whether the output is held back as possibly untagged calls, or not yet known not
        to be (a `[TOOL_CALLS]` prefix whole, the JSON's first character to come)."""
        return self._mode != "text"

    def feed(self, text: str) -> ParsedDeltas:
        buffer, self._buffer = self._buffer, ""
        buffer += text  # its only reference: CPython extends it in place, no copy of the output
        self._buffer = buffer
        out = ParsedDeltas()
        if self._mode == "start":
            head = self._lead()
            if not head:
                return out
            untagged = may_be_untagged(head) if self._untagged else False
            if untagged is None:
                return out  # undecided
            self._mode = "bare" if untagged else "text"
            if untagged:
                self._watch = UntaggedWatch(
                    len(self._buffer) - len(head), self._is_call, self._known
                )
        if self._mode == "bare":
            if self._watch is None or not self._watch.rules_out(self._buffer):
                return out
            self._mode = "text"  # no untagged calls: what was held goes out, read as text
        while True:
            if not self._in_call:
                content, self._buffer, opened = text_before(
                    self._buffer, OPEN, self._after_call, self._blank
                )
                out.add_text(content)
                self._after_call = self._after_call and not content
                self._blank = 0
                if not opened:
                    if self._after_call:  # held whitespace: read once, however long
                        self._blank = len(self._buffer) - partial_suffix(self._buffer, OPEN)
                    return out
                self._in_call = True
                continue
            end = self._buffer.find(CLOSE, self._close_from)
            if end < 0:
                self._close_from = max(self._close_from, len(self._buffer) - len(CLOSE) + 1)
                self._stream_partial(out)
                return out
            body, self._buffer = self._buffer[:end], self._buffer[end + len(CLOSE) :]
            self._in_call = False
            self._close_call(body, out, closed=True)

    def _lead(self) -> str:
        """The output after its whitespace and a `<|python_tag|>` / `[TOOL_CALLS]` prefix (a
        text that is only those is skipped for good: a flood of newlines is read once)."""
        rest = self._buffer[self._lead_end :]
        head = rest.lstrip() if self._prefixed else _strip_bare_prefix(rest)
        if not head and rest[-1:].isspace():  # (a prefix's last character is none: it may go on)
            self._lead_end = len(self._buffer)
            self._prefixed = self._prefixed or bool(rest.strip())
        return head

    def finish(self) -> ParsedDeltas:
        """End of output: flush held-back text; an unclosed call that parses counts as a call.
        Held output that is not untagged calls is read as text, as if let go while streaming."""
        calls = self.finish_untagged()
        if calls is not None:
            return calls
        out = self.feed("")  # text mode: what the buffer still holds is read (start: nothing)
        if self._in_call:
            self._in_call = False
            self._close_call(self._buffer, out, closed=False)
        elif self._buffer.strip() or not self._after_call:
            out.add_text(self._buffer)
        self._buffer = ""
        return out

    def finish_untagged(self) -> ParsedDeltas | None:
        """End of a held-back output: its calls if it is nothing but untagged calls (None: it
        is text, and the parser reads it so from now on)."""
        if self._mode != "bare":
            return None
        self._mode = "text"
        if self._watch is None or self._watch.rules_out(self._buffer):
            return None
        text = _strip_bare_prefix(self._buffer).rstrip()
        fenced = _FENCE.match(text)
        calls = _bare_calls(fenced[1].strip() if fenced else text)
        if calls is None or not all(self._valid(name, arguments) for name, arguments in calls):
            return None
        out = ParsedDeltas()
        for name, arguments in calls:
            call = ToolCall(new_call_id(), name, json.dumps(arguments, ensure_ascii=False))
            out.add_call(ToolCallDelta(len(self._calls), call.id, name))
            out.add_call(ToolCallDelta(len(self._calls), arguments=call.arguments))
            self._calls.append(call)
        self._buffer = ""
        return out

    def _is_call(self, value: Any) -> bool:
        call = _call_of(value)
        return call is not None and self._valid(*call)

    def _known(self, name: Any) -> bool:
        return isinstance(name, str) and without_surrogates(name) in self._schemas

    def _valid(self, name: str, arguments: dict[str, Any]) -> bool:
        if name not in self._schemas:
            return False
        schema = self._schemas[name]
        if not schema:
            return True
        if _PATTERN_PROPERTIES in json.dumps(schema):
            return True  # its keys are matched by the client's regular expressions (above)
        try:
            validator = jsonschema.validators.validator_for(schema)
            validator.check_schema(schema)
            _checked_safely(validator)(schema, registry=_NOTHING_FETCHED).validate(arguments)
        except jsonschema.ValidationError:
            return False
        except (jsonschema.SchemaError, Unresolvable, RecursionError):
            # A schema the validator cannot read (a `$ref` to nowhere, to itself, or off the
            # schema, which is never fetched): the name alone decides.
            return True
        return True

    def _stream_partial(self, out: ParsedDeltas) -> None:
        """Send the id and name, then argument text, of a call still being generated."""
        buffer = self._buffer
        start = self._head.end(buffer)  # where its arguments begin
        if start is None or self._nameless:
            return
        index = len(self._calls)
        if self._current_id is None:
            name = _name(self._head.name)
            if name is None:  # no JSON string: not a call, which its close will say
                self._nameless = True
                return
            self._current_id = new_call_id()
            out.add_call(ToolCallDelta(index, self._current_id, name))
        if not buffer.startswith("{", start):
            return  # a JSON string holding the object (or no object): its close decodes it
        if self._arguments is None:
            self._arguments = Arguments(start)
        cut = len(buffer) - partial_suffix(buffer, CLOSE)
        safe = self._arguments.safe(buffer, cut) - start
        if safe > self._streamed_arguments:
            fragment = buffer[start + self._streamed_arguments : start + safe]
            out.add_call(ToolCallDelta(index, arguments=fragment))
            self._streamed_arguments = safe

    def _close_call(self, body: str, out: ParsedDeltas, closed: bool) -> None:
        """A call whose text is `body` (whole, or all the output left): a call if it parses,
        or if its head is whole (its name was sent, streamed: the module docstring)."""
        index = len(self._calls)
        parsed = _parse_call(body)
        head = head_end(body)
        # The first "name" (the one streamed), also where a later duplicate wins in json.loads.
        first = _name(head[0]) if head else None
        if parsed is None and first is None:
            out.add_text(f"{OPEN}{body}{CLOSE if closed else ''}")  # not a call: it is text
            self._after_call = False
            self._new_call()
            return
        raw = None
        if head and body.startswith("{", head[1]):  # the model's object (what was streamed)
            end = ValueEnd(head[1]).end(body)
            raw = None if end is None else body[head[1] : end]
        if raw is None and parsed is not None:
            raw = json.dumps(parsed[1], ensure_ascii=False)  # keys in another order: re-serialise
        elif raw is None:  # no call that parses, its head whole: what was written
            raw = body[head[1] :].rstrip().removesuffix("}").rstrip() if head else ""
        name = first if first is not None else parsed[0] if parsed is not None else ""
        if self._current_id is None:
            self._current_id = new_call_id()
            out.add_call(ToolCallDelta(index, self._current_id, name))
        if len(raw) > self._streamed_arguments:
            out.add_call(ToolCallDelta(index, arguments=raw[self._streamed_arguments :]))
        self._calls.append(ToolCall(self._current_id, name, raw))
        self._after_call = True
        self._new_call()


def text_before(
    buffer: str, marker: str, after_call: bool, blank: int = 0
) -> tuple[str, str, bool]:
    """Split streamed output at the first `marker`: (content to emit now, what stays buffered —
    from just after the marker, or the tail that could still begin it —, whether the marker was
    found). Whitespace right after a call (`after_call`) separates calls and is not content,
    unless text follows it: until then it stays buffered. `blank`: the buffer's first
    characters are known to be whitespace (no marker begins with one, so none begins there)."""
    start = buffer.find(marker, blank)
    held = partial_suffix(buffer, marker) if start < 0 else 0
    text_end = start if start >= 0 else len(buffer) - held
    separator = after_call and not buffer[blank:text_end].strip()
    if separator and start < 0:
        return "", buffer, False
    content = "" if separator else buffer[:text_end]
    if start < 0:
        return content, buffer[text_end:], False
    return content, buffer[start + len(marker) :], True


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text, strict=False)  # (raw control characters: module docstring)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and not _too_deep(value, text) else None


def _too_deep(value: Any, text: str) -> bool:
    """Whether the model's JSON nests deeper than a body may (server/body.py): no call, so
    that nothing after it (surrogate repair, schema validation, serialising) meets Python's
    recursion limit, and a prompt cannot make the model's output a 500."""
    return isinstance(value, dict | list) and nests_deeper(value, MAX_JSON_DEPTH, text)


def _bare_calls(text: str) -> list[tuple[str, dict[str, Any]]] | None:
    """Calls from bare JSON: one object, several (separated by whitespace or ';'), or a list."""
    decoder = json.JSONDecoder(strict=False)
    values: list[Any] = []
    position = 0
    while position < len(text):
        start = position
        try:
            value, position = decoder.raw_decode(text, position)
        except (ValueError, RecursionError):
            return None
        if _too_deep(value, text[start:position]):
            return None
        values.extend(value if isinstance(value, list) else [value])
        while position < len(text) and text[position] in " \t\r\n;,":
            position += 1
    calls = [_call_of(value) for value in values]
    if not calls or any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def _parse_call(body: str) -> tuple[str, dict[str, Any]] | None:
    return _call_of(_json_object(body.strip()))


def _call_of(call: Any) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):  # some models send the arguments as a JSON string
        arguments = _json_object(arguments)
    if not isinstance(arguments, dict):
        return None
    return without_surrogates(call["name"]), without_surrogates(arguments)


def _name(text: str) -> str | None:
    """A call's name from the text of its JSON string; None where that is no valid JSON."""
    try:
        return str(without_surrogates(json.loads(f'"{text}"')))
    except ValueError:
        return None


def without_surrogates(value: Any) -> Any:
    """`value`, decoded from the model's JSON, with each lone surrogate as U+FFFD: a `\\ud800`
    escape decodes to no character, which UTF-8 cannot carry, so the response holding it could
    not be sent (a 500, or a stream cut short)."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {without_surrogates(k): without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_surrogates(item) for item in value]
    return value


def single_token_tags(engine: Any, tags: tuple[str, ...]) -> dict[str, int]:
    """The tags that are one token of `engine`'s vocabulary (Qwen's `<tool_call>` is), by id:
    a forced-call grammar names them as tokens. `engine.encode_text` may add a BOS token; the
    tokens an empty text encodes to are that prefix."""
    prefix = engine.encode_text("")
    found = {}
    for tag in tags:
        tokens = engine.encode_text(tag)
        if tokens[: len(prefix)] == prefix and len(tokens) == len(prefix) + 1:
            found[tag] = tokens[-1]
    return found
