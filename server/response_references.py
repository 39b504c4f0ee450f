"""`item_reference` input items (spec `ItemReferenceParam`): an item of a stored response named
by its `id`, which the request's input holds in its place.

Clients that keep a conversation themselves but let the server store responses send them: the
Vercel AI SDK's `openai.responses(...)` (store on by default) sends the assistant's earlier
messages as `{"type": "item_reference", "id": "msg_..."}` on every later turn.

Invariants:
- A reference is replaced by the stored item before the input is read, at its own position, so
  errors about the item name `input[i]` as the client sent it.
- A reference is an object whose `type` is `item_reference`, or one with nothing but an `id`
  (the spec's `type` may be left out or null).
- An id no stored response holds (never stored, `store: false`, deleted, expired) is a 404 naming
  `input[i].id`; an id that is not a non-empty string is a 400.
"""

from __future__ import annotations

from typing import Any

from server.errors import APIError
from server.response_store import ResponseStore


async def resolved(store: ResponseStore, raw_input: str | list[Any]) -> str | list[Any]:
    """`raw_input` with each reference replaced by the item it names."""
    if isinstance(raw_input, str):
        return raw_input
    ids = (_reference_id(index, item) for index, item in enumerate(raw_input))
    wanted = {index: item_id for index, item_id in enumerate(ids) if item_id is not None}
    if not wanted:
        return raw_input
    found = await store.items(set(wanted.values()))
    for index, item_id in wanted.items():
        if item_id not in found:
            raise APIError(
                404,
                f"Item with id '{item_id}' not found.",
                param=f"input[{index}].id",
                code="item_not_found",
            )
    return [found[wanted[i]] if i in wanted else item for i, item in enumerate(raw_input)]


def _reference_id(index: int, item: Any) -> str | None:
    """The id `item` references, or None when it is no reference."""
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind != "item_reference" and not (
        kind is None and "id" in item and item.keys() <= {"id", "type"}
    ):
        return None
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise APIError(
            400,
            f"Invalid value for 'input[{index}].id': an item reference's id is a non-empty string",
            param=f"input[{index}].id",
            code="invalid_value",
        )
    return item_id
