"""Reading request bodies: size limit, UTF-8, JSON, nesting depth, object-ness — each a clear
4xx (a client gone before its body arrived: 499, as for any request it leaves; a body that
stalls: 408, raised from `receive` by `server.body_timeout`).

FastAPI's own body parsing is not used for the OpenAI routes: its errors are not OpenAI-shaped
and it cannot enforce a size limit while reading.

Invariant: a body that passes `read_json_object` nests at most `MAX_JSON_DEPTH` levels, so the
code after it (validation, chat templates, grammars, `json.dumps` of tools and arguments) never
meets Python's recursion limit on a client's value.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from server.errors import APIError, loc_to_param
from server.validation_messages import pydantic_message

M = TypeVar("M", bound=BaseModel)

# Levels of arrays and objects a JSON body (or a JSON text inside one, such as a tool call's
# arguments) may nest; the body itself is level 1. Real requests nest a few dozen levels at
# most (a tool's parameters schema inside `tools`); Python's recursion limit (1000 frames, of
# which the server's own stack takes ~150) is far above it.
MAX_JSON_DEPTH = 100


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, or 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        # Not a server failure: answered (to no one) and logged as a refusal, not a traceback.
        raise APIError(499, "The client closed the connection before sending the whole body",
                       code="client_closed_request") from None  # fmt: skip
    return b"".join(chunks)


def _too_large(limit: int) -> APIError:
    return APIError(
        413, f"Request body is larger than the limit of {limit} bytes", code="body_too_large"
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    raw = await read_body(request, limit)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"{exc.reason} at byte {exc.start}"
        raise APIError(400, f"Request body is not valid UTF-8: {reason}") from None
    if not text.strip():
        raise APIError(400, "Request body is empty; expected a JSON object")
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:  # nested too deeply for the parser itself
        raise APIError(400, _too_deep("Request body"), code="json_too_deep") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise APIError(400, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"Request body must be a JSON object, not {type(body).__name__}")
    if nests_deeper(body, MAX_JSON_DEPTH, text):
        raise APIError(400, _too_deep("Request body"), code="json_too_deep")
    if b"\\ud" in raw.lower():  # only a \uD800–\uDFFF escape can smuggle in a lone surrogate
        _reject_lone_surrogates(body)
    return body


def _too_deep(what: str) -> str:
    return f"{what} nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"


def nests_deeper(value: Any, limit: int, text: str) -> bool:
    """Whether the parsed JSON `value` (of `text`) nests arrays and objects more than `limit`
    levels. A text with at most `limit` brackets cannot, so most bodies skip the walk; the walk
    is iterative (a recursive one would hit the recursion limit it guards against)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                pending.append((child, depth + 1))
    return False


def check_json_text(text: str, what: str) -> None:
    """A JSON text sent inside a string field (a tool call's `arguments`), which the chat
    templates parse: ValueError (a 400 naming the field, through `validate`) when it nests
    deeper than `MAX_JSON_DEPTH`, or escapes a lone UTF-16 surrogate (`"\\ud800"`: the body's
    own strings cannot hold one, see `read_json_object`, but parsed into the prompt it is text no
    tokenizer encodes). Text that is not JSON is left alone (templates keep it as text)."""
    deep = text.count("[") + text.count("{") > MAX_JSON_DEPTH
    escaped = "\\ud" in text.lower()  # only such an escape can decode to a lone surrogate
    if not (deep or escaped):
        return
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(_too_deep(what)) from None
    except ValueError:
        return
    if deep and isinstance(value, dict | list) and nests_deeper(value, MAX_JSON_DEPTH, text):
        raise ValueError(_too_deep(what))
    if escaped:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{what} escapes a lone UTF-16 surrogate, which is not valid Unicode text"
            ) from None


def _reject_lone_surrogates(body: dict[str, Any]) -> None:
    """JSON may escape half of a UTF-16 pair (e.g. "\ud800"), which is no Unicode text at all:
    refuse it here rather than let a tokenizer or encoder fail on it later."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(
            400,
            f"Request body contains a lone UTF-16 surrogate ({exc.object[exc.start]!a}), "
            "which is not valid Unicode text",
        ) from None


def validate(model: type[M], body: dict[str, Any]) -> M:
    """Validate into `model`; the first error becomes a 400 naming its `param`."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        param = loc_to_param(error["loc"])
        message = pydantic_message(error)
        if param:
            message = f"Invalid value for '{param}': {message}"
        raise APIError(400, message, param=param, code="invalid_value") from None
