"""`POST /v1/responses/compact`: a long conversation shrunk to a `compaction` item whose
content is a summary the model itself wrote.

The summary is a response like any other: the conversation (instructions and items), then
`COMPACTION_PROMPT` as a user message, through the chat path and the same engine batch as
`POST /v1/responses`; the text the model answers (not its reasoning) is the summary.

Invariants:
- The output is one `compaction` item (OpenAI's lists the user messages before it, as user
  `message` items, which the SDK's `CompactedResponse` type refuses: its output messages are the
  assistant's). The item carries those user messages itself (server/compaction_content.py), so
  a request that sends it in `input` sees what OpenAI's would: the conversation's (newest)
  user messages, then the summary.
- The user messages carried are the newest of the conversation's (those of earlier compactions
  included; the summary of an earlier compaction is not one: the new summary is written from
  it) whose JSON fits `carried_budget` bytes: Codex's own compaction keeps 20,000 tokens of
  them, here also at most a quarter of the model's context, at 4 bytes a token. They are kept
  whole, newest first, up to the first that does not fit; where the newest alone does not, it
  is carried cut to the budget (`carried_messages`), never left out. The count of those left
  out, added to an earlier compaction's, is in the item, whose summary heading states it. A
  long session's compaction thus stays small: carrying every message, it grew with the
  session until the request that sent it back passed the body limit (a 413).
- A conversation too long for the model's context with the prompt, or of more messages than a
  request may hold (`max_messages`), is summarized from its latest turns that fit
  (server/responses_truncation.py: the oldest are dropped); the user messages carried are
  chosen from all of them, as above.
- The summary (the model's output, reasoning included) is at most `SUMMARY_MAX_TOKENS` or the
  room left in the context, the smaller: the client has no limit to give, and a model that
  does not stop must not fill the context with it. One cut short is returned as it stands.
"""

from __future__ import annotations

import json
from typing import Any

from server.compaction_content import Compacted, decode, encode
from server.responses_output import new_id
from server.schemas.responses import CompactionItem, InputItem, MessageItem

SUMMARY_MAX_TOKENS = 4096
CARRIED_MAX_TOKENS = 20_000  # what Codex keeps of the user's messages when it compacts
BYTES_PER_TOKEN = 4  # Codex's estimate, too: no tokenizing of megabytes of messages
# Where the middle of a message carried cut was, and how many characters it held.
CUT_NOTE = "[… {} characters cut when the conversation was compacted …]"
COMPACTION_PROMPT = (
    "The conversation above is about to be compacted: it will be replaced by a summary. "
    "Write that summary now, so the work can go on from it alone: what the user asked for, "
    "what has been done so far (decisions, results, what the tools returned), what is left "
    "to do, and every name, number, file path and piece of code a later step needs. "
    "Write only the summary."
)


def prompt_message() -> MessageItem:
    """The request that makes the model write the summary, after the conversation."""
    return MessageItem(role="user", content=COMPACTION_PROMPT)


def compaction_item(summary: str, items: list[InputItem], context_length: int) -> dict[str, Any]:
    """The output item (spec `CompactionBody`) for `summary` of the conversation `items`, for
    a model of `context_length` tokens."""
    messages, earlier = _user_messages(items)
    carried, dropped = carried_messages(messages, carried_budget(context_length))
    content = encode(Compacted(summary, carried, earlier + dropped))
    return {"id": new_id("cmp"), "type": "compaction", "encrypted_content": content}


def carried_budget(context_length: int) -> int:
    """The most bytes of JSON of user messages a compaction carries, for a model of
    `context_length` tokens: `CARRIED_MAX_TOKENS`, or a quarter of the context where that is
    less (the summary and the work that follows need the rest), at `BYTES_PER_TOKEN`."""
    return BYTES_PER_TOKEN * min(CARRIED_MAX_TOKENS, context_length // 4)


def carried_messages(
    messages: list[dict[str, Any]], budget: int
) -> tuple[list[dict[str, Any]], int]:
    """The newest of `messages` (oldest first) whose JSON fits in `budget` bytes, whole and in
    order, and how many of the oldest are left out. Where the newest alone does not fit it is
    cut to (`_cut`), so the latest request is always carried."""
    kept: list[dict[str, Any]] = []
    room = budget
    for message in reversed(messages):
        size = _size(message)
        if size > room:
            break
        kept.append(message)
        room -= size
    if not kept and messages:
        kept.append(_cut(messages[-1], budget))
    kept.reverse()
    return kept, len(messages) - len(kept)


def _cut(message: dict[str, Any], budget: int) -> dict[str, Any]:
    """`message` made to fit `budget` bytes: its text cut in the middle (`_cut_text`); in parts,
    those that are no text (images) left out, largest first, while its texts cut to nothing
    would still not fit, then its text parts cut, longest first. Text is what a later turn
    reads of it; a data-URL image alone may be megabytes. A budget smaller than the message's
    frame and the notes leaves it at that, larger than the budget."""
    content = message["content"]
    if isinstance(content, str):
        return {**message, "content": _cut_text(content, _size(message) - budget)}
    parts = list(content)

    def least(parts: list[dict[str, Any]]) -> int:
        """Its size with every text cut as short as it goes."""
        texts = [_cut_text(p["text"], _size(p["text"])) if _is_text(p) else None for p in parts]
        return _size({**message, "content": _with_texts(parts, texts)})

    while least(parts) > budget and not all(_is_text(part) for part in parts):
        parts.remove(max((part for part in parts if not _is_text(part)), key=_size))
    over = _size({**message, "content": parts}) - budget
    texts = [i for i, part in enumerate(parts) if _is_text(part)]
    for index in sorted(texts, key=lambda i: -len(parts[i]["text"])):
        if over <= 0:
            break
        text = parts[index]["text"]
        cut = _cut_text(text, over)
        over -= _size(text) - _size(cut)
        parts[index] = {**parts[index], "text": cut}
    return {**message, "content": parts}


def _cut_text(text: str, over: int) -> str:
    """`text` at least `over` bytes (of JSON) shorter, its start and end kept and `CUT_NOTE`
    in place of the middle; where it cannot be made that much shorter, as short as it goes
    (the note alone, or the text itself where that is shorter than the note)."""
    size = _size(text)
    removed = over
    while removed < len(text):
        head = (len(text) - removed + 1) // 2
        cut = text[:head] + CUT_NOTE.format(removed) + text[head + removed :]
        shortfall = _size(cut) - (size - over)
        if shortfall <= 0:
            return cut
        removed += shortfall  # every character is at least a byte of JSON
    note = CUT_NOTE.format(len(text))
    return note if _size(note) < size else text


def _with_texts(parts: list[dict[str, Any]], texts: list[str | None]) -> list[dict[str, Any]]:
    """`parts`, each text part's text replaced by its entry of `texts`."""
    return [p if t is None else {**p, "text": t} for p, t in zip(parts, texts, strict=True)]


def _is_text(part: dict[str, Any]) -> bool:
    return isinstance(part.get("text"), str)


def _size(value: object) -> int:
    """Bytes of `value` as JSON, written as the compaction's content writes it."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _user_messages(items: list[InputItem]) -> tuple[list[dict[str, Any]], int]:
    """The conversation's user messages as sent, oldest first (an earlier compaction's own),
    and how many earlier compactions left out."""
    messages: list[dict[str, Any]] = []
    dropped = 0
    for item in items:
        if isinstance(item, CompactionItem):
            messages += [m.model_dump(by_alias=True, exclude_none=True) for m in item.carried()]
            dropped += decode(item.encrypted_content).dropped
        elif isinstance(item, MessageItem) and item.role == "user":
            messages.append(item.model_dump(by_alias=True, exclude_none=True))
    return messages, dropped
