"""The `encrypted_content` of a `compaction` item (`POST /v1/responses/compact`): what a later
request expands the item back into when it is sent in `input`.

OpenAI encrypts it. Here there is no secret to keep from the client that sent the conversation
in the first place, so it is not encrypted, only wrapped: `mlxd-compaction-v1:` then the
base64url of a JSON object `{"summary": str, "messages": [message item, ...], "dropped": int}`,
the model's summary, the conversation's newest user messages (verbatim, as OpenAI's compacted
output keeps them, within a budget: server/responses_compaction.py) and how many of its earliest
were left out (`dropped`, 0 where the field is missing: items written before it). Anyone can
read it; clients treat it as opaque, as they do OpenAI's.

Invariants:
- `decode(encode(c)) == c`.
- Anything else `decode` is given (another server's ciphertext, an edited payload) raises
  ValueError whose message says what is wrong; it never yields part of a result. The payload is
  checked as the body's JSON is (nesting depth, lone surrogates: server/body.py), so no such
  text reaches a template.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from server.body import check_json_text

PREFIX = "mlxd-compaction-v1:"
# How the summary is put back into the conversation: the user message it becomes starts so,
# and says how many user messages are not carried where some are not.
SUMMARY_HEADING = "Summary of the conversation so far, written when it was compacted:"
DROPPED_HEADING = (
    "Summary of the conversation so far, written when it was compacted (left out above to keep "
    "it short: the earliest {} user messages):"
)


@dataclass(frozen=True)
class Compacted:
    """A compaction's content: the model's summary, the user messages it carries (message
    items as the client sent them, checked by the caller) and how many earlier ones it does
    not."""

    summary: str
    messages: list[dict[str, Any]]
    dropped: int = 0

    def summary_message(self) -> str:
        """The text of the user message the summary becomes, headed."""
        heading = DROPPED_HEADING.format(self.dropped) if self.dropped else SUMMARY_HEADING
        return f"{heading}\n\n{self.summary}"


def encode(compacted: Compacted) -> str:
    payload = {
        "summary": compacted.summary,
        "messages": compacted.messages,
        "dropped": compacted.dropped,
    }
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return PREFIX + base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii")


def decode(content: str) -> Compacted:
    """The content `encode` wrote; ValueError for anything else."""
    if not content.startswith(PREFIX):
        raise ValueError(
            f"not a compaction this server wrote (its content starts with {PREFIX!r}); "
            "compact the conversation again with POST /v1/responses/compact"
        )
    try:
        raw = base64.b64decode(content[len(PREFIX) :], altchars=b"-_", validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeError):
        raise ValueError("the compaction's content is damaged (not base64url of UTF-8)") from None
    check_json_text(text, "the compaction's content")
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("the compaction's content is damaged (not JSON)") from None
    summary = payload.get("summary") if isinstance(payload, dict) else None
    messages = payload.get("messages") if isinstance(payload, dict) else None
    dropped = payload.get("dropped", 0) if isinstance(payload, dict) else None
    if (
        not isinstance(summary, str)
        or not isinstance(messages, list)
        or not all(isinstance(m, dict) for m in messages)
    ):
        raise ValueError("the compaction's content is damaged (no summary and messages)")
    if type(dropped) is not int or dropped < 0:  # bool is an int to isinstance
        raise ValueError("the compaction's content is damaged ('dropped' is no count)")
    return Compacted(summary, messages, dropped)
