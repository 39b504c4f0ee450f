"""`POST /v1/responses/compact`: a long conversation shrunk to a `compaction` item whose
content is a summary the model itself wrote.

The summary is a response like any other: the conversation (instructions and items), then
`COMPACTION_PROMPT` as a user message, through the chat path and the same engine batch as
`POST /v1/responses`; the text the model answers (not its reasoning) is the summary.

Invariants:
- The output is one `compaction` item (OpenAI's lists the user messages before it, as user
  `message` items, which the SDK's `CompactedResponse` type refuses: its output messages are the
  assistant's). The item carries those user messages itself (server/compaction_content.py), so
  a request that sends it in `input` sees what OpenAI's would: every user message of the
  conversation, then the summary.
- The user messages carried are all of them, those of earlier compactions included; the summary
  of an earlier compaction is not one (the new summary is written from it).
- A conversation too long for the model's context with the prompt is summarized from its
  latest turns that fit (server/responses_truncation.py: the oldest are dropped); every user
  message is still carried.
- The summary (the model's output, reasoning included) is at most `SUMMARY_MAX_TOKENS` or the
  room left in the context, the smaller: the client has no limit to give, and a model that
  does not stop must not fill the context with it. One cut short is returned as it stands.
"""

from __future__ import annotations

from typing import Any

from server.compaction_content import Compacted, encode
from server.responses_output import new_id
from server.schemas.responses import CompactionItem, InputItem, MessageItem

SUMMARY_MAX_TOKENS = 4096
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


def compaction_item(summary: str, items: list[InputItem]) -> dict[str, Any]:
    """The output item (spec `CompactionBody`) for `summary` of the conversation `items`."""
    content = encode(Compacted(summary, _user_messages(items)))
    return {"id": new_id("cmp"), "type": "compaction", "encrypted_content": content}


def _user_messages(items: list[InputItem]) -> list[dict[str, Any]]:
    """The conversation's user messages as sent, oldest first (an earlier compaction's own)."""
    messages: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, CompactionItem):
            messages += [m.model_dump(by_alias=True, exclude_none=True) for m in item.carried()]
        elif isinstance(item, MessageItem) and item.role == "user":
            messages.append(item.model_dump(by_alias=True, exclude_none=True))
    return messages
