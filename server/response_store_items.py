"""A stored response's input items, for `GET /v1/responses/{id}/input_items`.

Spec: `listInputItems` and `ResponseItemList` in ../shared/openai/openapi.yaml. A response's
input items are the whole conversation its model saw: the items of every response it continues
(`previous_response_id`), then its own input, oldest first; its output is not part of them.

Invariants:
- Every item is stored with an `id` (`with_ids` gives one to items the client sent without), so
  a page's cursor (`after`, `before`) names the same item on every call and in every response
  that continues the conversation.
- Items are listed in the SDK's `ResponseItem` shapes: message content as a list of parts
  (`input_text` for user/system/developer, `output_text` with `annotations` for assistant),
  a `status` on every message and call.
- `include` adds what the spec says it adds: an input image's `image_url`
  (`message.input_image.image_url`) and a reasoning item's `encrypted_content`
  (`reasoning.encrypted_content`); without it they are left out, as OpenAI does. A
  `compaction` item always has its `encrypted_content` (the spec requires it).
- A query value out of range, an unknown `include` value or a cursor naming no item of the list
  is a 400 naming that query parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from server.errors import APIError
from server.responses_output import new_id
from server.schemas.responses import (
    CompactionItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    ImagePart,
    InputItem,
    MessageItem,
    RefusalPart,
    TextPart,
    parse_items,
)

ID_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "compaction": "cmp",
}
STATUSES = frozenset({"in_progress", "completed", "incomplete"})
# `ResponseIncludable` in the spec; the ones an input item can carry are honoured.
INCLUDABLE = frozenset(
    {
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
        "message.output_text.logprobs",
    }
)
MAX_LIMIT = 100
DEFAULT_LIMIT = 20


def with_ids(items: list[InputItem]) -> list[InputItem]:
    """`items`, each without an `id` given a fresh one (reasoning items get `rs_`)."""
    return [
        item
        if item.id
        else item.model_copy(update={"id": new_id(ID_PREFIXES.get(item.type, "rs"))})
        for item in items
    ]


@dataclass(frozen=True)
class ListQuery:
    """The query of an input-items request, checked."""

    limit: int
    order: Literal["asc", "desc"]
    after: str | None
    before: str | None
    include: frozenset[str]

    @classmethod
    def parse(cls, params: dict[str, list[str]]) -> ListQuery:
        """From the query's values by name; `include` may come as `include[]` (the OpenAI SDKs'
        bracket format) or repeated `include`."""
        limit_text = _single(params, "limit")
        try:
            limit = DEFAULT_LIMIT if limit_text is None else int(limit_text)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise _bad("limit", f"'limit' must be an integer from 1 to {MAX_LIMIT}")
        order = _single(params, "order") or "desc"
        if order not in ("asc", "desc"):
            raise _bad("order", "'order' must be 'asc' or 'desc'")
        include = frozenset(params.get("include", []) + params.get("include[]", []))
        unknown = sorted(include - INCLUDABLE)
        if unknown:
            raise _bad("include", f"Unknown 'include' value {unknown[0]!r}")
        after, before = _single(params, "after"), _single(params, "before")
        return cls(limit, "asc" if order == "asc" else "desc", after, before, include)


def input_items(conversation: list[dict[str, Any]], output_count: int) -> list[InputItem]:
    """A stored conversation's input items: all but the response's own `output_count` outputs."""
    return parse_items(conversation[: len(conversation) - output_count])


def item_page(items: list[InputItem], query: ListQuery) -> dict[str, Any]:
    """One page of `items` (spec `ResponseItemList`). In the listing order, `after` starts just
    past its item and `before` ends just before its item; with `before` alone the page is the
    `limit` items closest to it, so paging backwards meets the previous page exactly."""
    ordered = items if query.order == "asc" else items[::-1]
    ids = [item.id for item in ordered]
    start = _position(ids, query.after, "after") + 1 if query.after is not None else 0
    end = _position(ids, query.before, "before") if query.before is not None else len(ordered)
    window = ordered[start:end]
    from_end = query.before is not None and query.after is None
    page = window[-query.limit :] if from_end else window[: query.limit]
    data = [listed(item, query.include) for item in page]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(window) > query.limit,
    }


def listed(item: InputItem, include: frozenset[str]) -> dict[str, Any]:
    """`item` in the SDK's `ResponseItem` shape."""
    if isinstance(item, CompactionItem):  # no status; its content always (spec `CompactionBody`)
        return item.model_dump(exclude_none=True)
    status = item.status if item.status in STATUSES else "completed"
    if isinstance(item, MessageItem):
        assistant = item.role == "assistant"
        parts = [TextPart(type="input_text", text=item.content)] if isinstance(
            item.content, str
        ) else item.content  # fmt: skip
        body: dict[str, Any] = {
            "id": item.id,
            "type": "message",
            "role": item.role,
            "content": [_part(part, assistant, include) for part in parts],
            "status": status,
        }
        if assistant and item.phase is not None:
            body["phase"] = item.phase
        return body
    if isinstance(item, FunctionCallItem):
        return item.model_dump(exclude_none=True) | {"status": status}
    if isinstance(item, FunctionCallOutputItem):
        output = item.output if isinstance(item.output, str) else [
            _part(part, False, include) for part in item.output
        ]  # fmt: skip
        return {
            "id": item.id,
            "type": "function_call_output",
            "call_id": item.call_id,
            "output": output,
            "status": status,
        }
    exclude = None if "reasoning.encrypted_content" in include else {"encrypted_content"}
    return item.model_dump(exclude_none=True, exclude=exclude)


def _part(
    part: TextPart | RefusalPart | ImagePart, assistant: bool, include: frozenset[str]
) -> dict[str, Any]:
    if isinstance(part, ImagePart):
        image: dict[str, Any] = {"type": "input_image", "detail": part.detail or "auto"}
        if part.file_id is not None:
            image["file_id"] = part.file_id
        if "message.input_image.image_url" in include:
            image["image_url"] = part.image_url
        return image
    if isinstance(part, RefusalPart):
        if assistant:
            return {"type": "refusal", "refusal": part.refusal}
        return {"type": "input_text", "text": part.refusal}
    if assistant:
        return {"type": "output_text", "text": part.text, "annotations": part.annotations or []}
    return {"type": "input_text", "text": part.text}


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name, [])
    if len(values) > 1:
        raise _bad(name, f"'{name}' is given more than once")
    return values[0] if values else None


def _position(ids: list[str | None], cursor: str, param: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise _bad(param, f"No input item with id '{cursor}' in this response") from None


def _bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")
