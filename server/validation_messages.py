"""pydantic's validation errors in the words mlxd's users read, for the HTTP edge (a 400's
message) and for the models file and the command line (one line): a validator's own text
without pydantic's "Value error, " prefix, and JSON's names for what was expected.

Imports no web framework: the command line reads the models file without starting a server."""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import ErrorDetails

# pydantic error types whose message names Python's types or pydantic's classes ("a valid
# dictionary or instance of ChatMessage"): said in JSON's words instead.
_OBJECT_TYPES = frozenset({"dict_type", "model_type", "model_attributes_type", "dataclass_type"})
_JSON_NOUNS = {"List": "Array", "Tuple": "Array", "Set": "Array", "Dictionary": "Object"}


def pydantic_message(error: ErrorDetails) -> str:
    """A pydantic error's message as a client should read it: a validator's own text without
    pydantic's "Value error, " prefix, and JSON's names for what was expected (an object, an
    array, a `type` field) instead of Python's types, pydantic's model classes and its
    discriminator and "after validation" wording. Other messages are pydantic's, unchanged."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _OBJECT_TYPES:
        return "Input should be an object"
    if kind == "list_type":
        return "Input should be an array"
    if kind == "union_tag_not_found":
        return f"Input should have a {ctx['discriminator']} field"
    if kind == "union_tag_invalid":
        expected, given = ctx["expected_tags"], ctx["tag"]
        return f"Input {ctx['discriminator']} should be one of {expected}, not '{given}'"
    if kind in ("too_short", "too_long"):
        noun = _JSON_NOUNS.get(ctx["field_type"], ctx["field_type"])
        if kind == "too_short":
            limit, bound = "at least", ctx["min_length"]
        else:
            limit, bound = "at most", ctx["max_length"]
        items = "item" if bound == 1 else "items"
        actual = ctx.get("actual_length")  # None when pydantic stopped counting
        return f"{noun} should have {limit} {bound} {items}" + (
            "" if actual is None else f", not {actual}"
        )
    return str(error["msg"])


def one_line(exc: ValidationError) -> str:
    """The first error as `where: message` (`models.0.kind: unknown kind 'llm'; ...`), or its
    message alone when it is about the whole input."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    message = pydantic_message(first)
    return f"{where}: {message}" if where else message
