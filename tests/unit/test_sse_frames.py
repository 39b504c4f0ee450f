"""server/sse.py encodes frames itself: the bytes must be exactly those sse-starlette's own
`ServerSentEvent` writes for the same event, whatever the payload holds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sse_starlette import ServerSentEvent

from server import sse

PAYLOADS: list[dict[str, Any]] = [
    {"choices": [{"delta": {"content": "plain"}}]},
    {"text": 'line\nbreak\r\nand "quotes" \\ back\tslash'},
    {"text": "naïve café 日本語 🙂 \u2028 \u0085 \x00"},
    {"nested": {"list": [1, 2.5, None, True], "empty": {}}},
]


def _library(payload: dict[str, Any], event: str | None = None) -> bytes:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return ServerSentEvent(text, event=event).encode()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_data_frames_are_the_librarys_bytes(payload: dict[str, Any]) -> None:
    assert sse.data(payload) == _library(payload)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_named_events_are_the_librarys_bytes(payload: dict[str, Any]) -> None:
    name = "content_block_delta"
    assert sse.event(name, payload) == _library(payload, event=name)


def test_done_is_the_librarys_bytes() -> None:
    assert sse.done() == ServerSentEvent("[DONE]").encode() == b"data: [DONE]\r\n\r\n"


TEXTS = ["", "Hello", ' "quoted" \\ \n\r\t', "naïve 日本語 🙂 \u2028", "\x00slot\x00 inside"]


@pytest.mark.parametrize("text", TEXTS)
def test_template_frames_are_whole_frames(text: str) -> None:
    def payload(content: str) -> dict[str, Any]:
        return {"id": "c-1", "choices": [{"delta": {"content": content}, "logprobs": None}]}

    assert sse.Template(payload(sse.SLOT))(text) == sse.data(payload(text))


@pytest.mark.parametrize(
    "payload", [{"text": "no slot"}, {"model": sse.SLOT, "delta": {"content": sse.SLOT}}]
)
def test_a_template_needs_exactly_one_slot(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly once"):
        sse.Template(payload)


@pytest.mark.parametrize("model", ["m", sse.SLOT])
def test_templated_frames_whatever_the_client_strings(model: str) -> None:
    """From a Template, or whole when a client's string is the slot marker: the same bytes."""

    def payload(text: str) -> dict[str, Any]:
        return {"model": model, "choices": [{"text": text, "index": 0}]}

    frames = sse.templated(payload)
    assert isinstance(frames, sse.Template) == (model != sse.SLOT)
    for text in TEXTS:
        assert frames(text) == sse.data(payload(text))
