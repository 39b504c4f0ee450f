"""Reading request bodies: size limit, UTF-8, JSON, object-ness — each a clear 4xx.

FastAPI's own body parsing is not used for the OpenAI routes: its errors are not OpenAI-shaped
and it cannot enforce a size limit while reading.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from server.errors import APIError, loc_to_param

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, or 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
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
    except (json.JSONDecodeError, ValueError) as exc:
        raise APIError(400, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"Request body must be a JSON object, not {type(body).__name__}")
    if b"\\ud" in raw.lower():  # only a \uD800–\uDFFF escape can smuggle in a lone surrogate
        _reject_lone_surrogates(body)
    return body


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
        message = str(error["msg"])
        if param:
            message = f"Invalid value for '{param}': {message}"
        raise APIError(400, message, param=param, code="invalid_value") from None
