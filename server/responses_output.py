"""Chat output as Responses output items, and the stream events that build them.

`OutputItems` is fed the chat deltas a `ChoiceOutput` yields (`content`, `reasoning_content`,
`tool_calls`) and answers the Responses events for each: a reasoning item, a message item and a
`function_call` item per call, in the order the model wrote them.

Invariants:
- At most one item is open. An item is announced (`output_item.added`, plus `content_part.added`
  for text) before any of its deltas and closed (`….done`, `content_part.done`,
  `output_item.done`) before the next one opens: the order the official SDK's stream helper and
  Codex require.
- Whitespace alone (the newline before a tool call) does not open a message item; it is kept
  and sent with the next text, if any.
- Streamed and non-streamed responses come from this same object, so their `output` agree.
- A reasoning item's text is its `content` (`reasoning_text`). Where the request asks for a
  reasoning summary (`summary`), it is also its `summary` (`summary_text`): no other model
  writes a summary here, so the "summary" is the whole reasoning. Its stream is then OpenAI's
  summary events (`reasoning_summary_part.added`, `reasoning_summary_text.delta`…, `.done`,
  `reasoning_summary_part.done`) instead of the `reasoning_text` ones, so that clients that show
  both kinds of delta as thinking (several do) show it once; the item done carries both.
- Token logprobs (`offer`, when the request asks for them) go with the output text their tokens
  made: the next `output_text.delta` carries those offered since the last one, and the message's
  `output_text` part holds them all; tokens that made reasoning or a call are not the text's.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from server.responses_input import split_name

Event = dict[str, Any]
ItemStatus = Literal["completed", "incomplete"]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class _OpenItem:
    index: int
    item: dict[str, Any]
    text: str = ""  # the text, reasoning or arguments received so far
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # a message's, so far

    @property
    def kind(self) -> str:
        return str(self.item["type"])


@dataclass
class OutputItems:
    namespaces: frozenset[str] = frozenset()
    summary: bool = False  # the reasoning is asked for as `summary_text` too
    done: list[dict[str, Any]] = field(default_factory=list)
    _open: _OpenItem | None = None
    _space: str = ""
    _offered: list[dict[str, Any]] = field(default_factory=list)

    @property
    def output(self) -> list[dict[str, Any]]:
        """The items so far (the open one as it stands)."""
        in_progress = [_finished(self._open, "in_progress", self.summary)] if self._open else []
        return self.done + in_progress

    @property
    def has_calls(self) -> bool:
        return any(item["type"] == "function_call" for item in self.done)

    def offer(self, logprobs: list[dict[str, Any]]) -> None:
        """Logprobs of tokens the next deltas come from (spec `LogProb`, chat's entries)."""
        self._offered += logprobs

    def feed(self, delta: dict[str, Any]) -> list[Event]:
        """The events for one chat delta."""
        if delta.get("content"):
            return self._text(delta["content"])
        if delta.get("reasoning_content"):
            self._offered = []  # the reasoning's tokens
            return self._reasoning(delta["reasoning_content"])
        events: list[Event] = []
        for call in delta.get("tool_calls") or []:
            self._offered = []  # the call's tokens
            events += self._call(call)
        return events

    def finish(self, status: ItemStatus) -> list[Event]:
        """Close the open item (`status` "incomplete" when the output was cut short); an output
        with no item at all gets an empty message, so clients always find one. A call whose
        arguments the end of sequence cut short is "incomplete" whatever `status` says: its
        arguments are no JSON, and an agent must not run it as a finished call."""
        events: list[Event] = []
        if not self.done and self._open is None:
            events += self._open_message()
        elif (
            self._open is not None
            and self._open.kind == "function_call"
            and not _whole_json(self._open.text)
        ):
            status = "incomplete"
        return events + self._close(status)

    def _reasoning(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self._open.kind != "reasoning":
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": []}
            events += self._close("completed") + self._add(item)
            if self.summary:
                part = {"type": "summary_text", "text": ""}
                events.append(self._part_event("response.reasoning_summary_part.added", part))
            else:
                part = {"type": "reasoning_text", "text": ""}
                events.append(self._part_event("response.content_part.added", part))
        return events + self._append(text)

    def _text(self, text: str) -> list[Event]:
        if self._open is None or self._open.kind != "message":
            if not text.strip():
                self._space += text
                return []
            return self._close("completed") + self._open_message() + self._append(text)
        return self._append(text)

    def _open_message(self) -> list[Event]:
        item = {"id": new_id("msg"), "type": "message", "role": "assistant", "content": []}
        events = self._add(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events.append(self._part_event("response.content_part.added", part))
        text, self._space = self._space, ""
        return events + (self._append(text) if text else [])

    def _call(self, call: dict[str, Any]) -> list[Event]:
        function = call.get("function") or {}
        events: list[Event] = []
        if call.get("id") is not None:
            self._space = ""
            namespace, name = split_name(function.get("name", ""), self.namespaces)
            item: dict[str, Any] = {
                "id": new_id("fc"),
                "type": "function_call",
                "call_id": call["id"],
                "name": name,
                "arguments": "",
            }
            if namespace is not None:
                item["namespace"] = namespace
            events += self._close("completed") + self._add(item)
        arguments = function.get("arguments") or ""
        return events + (self._append(arguments) if arguments else [])

    def _add(self, item: dict[str, Any]) -> list[Event]:
        self._open = _OpenItem(len(self.done), item)
        added = _finished(self._open, "in_progress", self.summary)
        return [
            {"type": "response.output_item.added", "output_index": self._open.index, "item": added}
        ]

    def _append(self, text: str) -> list[Event]:
        current = self._open
        assert current is not None
        current.text += text
        where = {"item_id": current.item["id"], "output_index": current.index}
        if current.kind == "function_call":
            return [{"type": "response.function_call_arguments.delta", **where, "delta": text}]
        if current.kind == "reasoning" and self.summary:
            delta = {**where, "summary_index": 0, "delta": text}
            return [{"type": "response.reasoning_summary_text.delta", **delta}]
        kind = "output_text" if current.kind == "message" else "reasoning_text"
        event = {"type": f"response.{kind}.delta", **where, "content_index": 0, "delta": text}
        if kind == "output_text":
            offered, self._offered = self._offered, []
            current.logprobs += offered
            event["logprobs"] = [_delta_logprob(entry) for entry in offered]
        return [event]

    def _close(self, status: ItemStatus) -> list[Event]:
        current, self._open = self._open, None
        if current is None:
            return []
        where = {"item_id": current.item["id"], "output_index": current.index}
        events: list[Event] = []
        if current.kind == "function_call":
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    **where,
                    # The spec's event names the function (openai-python 3.3's type requires it).
                    "name": current.item["name"],
                    "arguments": current.text,
                }
            )
        elif current.kind == "reasoning" and self.summary:
            summary = {**where, "summary_index": 0}
            events += [
                {"type": "response.reasoning_summary_text.done", **summary, "text": current.text},
                {
                    "type": "response.reasoning_summary_part.done",
                    **summary,
                    "part": _summary_part(current),
                },
            ]
        else:
            kind = "output_text" if current.kind == "message" else "reasoning_text"
            done: Event = {"type": f"response.{kind}.done", **where, "content_index": 0}
            done["text"] = current.text
            if kind == "output_text":
                done["logprobs"] = current.logprobs
            part = _part(current)
            events += [
                done,
                {"type": "response.content_part.done", **where, "content_index": 0, "part": part},
            ]
        finished = _finished(current, status, self.summary)
        self.done.append(finished)
        events.append(
            {"type": "response.output_item.done", "output_index": current.index, "item": finished}
        )
        return events

    def _part_event(self, kind: str, part: dict[str, Any]) -> Event:
        """A part's `….added` event: a content part's, or a reasoning summary's."""
        assert self._open is not None
        where = {"item_id": self._open.item["id"], "output_index": self._open.index}
        index = {"summary_index": 0} if part["type"] == "summary_text" else {"content_index": 0}
        return {"type": kind, **where, **index, "part": part}


def _whole_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # nested too deeply to parse: no whole JSON either
        return False
    return True


def _delta_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    """A delta event's logprob (spec `ResponseLogProb`: no `bytes`)."""
    top = [{"token": t["token"], "logprob": t["logprob"]} for t in entry["top_logprobs"]]
    return {"token": entry["token"], "logprob": entry["logprob"], "top_logprobs": top}


def _part(current: _OpenItem) -> dict[str, Any]:
    if current.kind == "message":
        return {
            "type": "output_text",
            "text": current.text,
            "annotations": [],
            "logprobs": current.logprobs,
        }
    return {"type": "reasoning_text", "text": current.text}


def _summary_part(current: _OpenItem) -> dict[str, Any]:
    return {"type": "summary_text", "text": current.text}


def _finished(current: _OpenItem, status: str, summary: bool) -> dict[str, Any]:
    """The item with its text so far and `status` (`summary`: a reasoning item's text is its
    summary too)."""
    item = {**current.item, "status": status}
    if current.kind == "function_call":
        item["arguments"] = current.text
    elif status != "in_progress" or current.text:
        item["content"] = [_part(current)]
        if current.kind == "reasoning" and summary:
            item["summary"] = [_summary_part(current)]
    return item
