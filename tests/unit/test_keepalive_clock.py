"""Keep-alives run on a wall clock, for every streaming API: while an engine is silent (a long
prefill: the fake engines sleep without taking a single step), each stream still sends a comment
(or Anthropic's `ping` event) every `keepalive_interval_s`, over a real socket."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine, FakeSpeechEngine
from tests.servers import serve
from tests.speech import encode

SILENCE_S = 0.8  # the engine says nothing for this long before its first token / segment
INTERVAL_S = 0.1

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "go"}], "max_tokens": 5}
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {**CHAT, "stream": True}),
    "completions": (
        "/v1/completions",
        {"model": "fake", "prompt": "go", "max_tokens": 5, "stream": True},
    ),
    "responses": ("/v1/responses", {"model": "fake", "input": "go", "stream": True}),
    "messages": ("/v1/messages", {**CHAT, "stream": True}),
}


def keepalive_times(lines: list[tuple[float, str]], first_content: str) -> list[float]:
    """Arrival times of the keep-alives received before the first line containing
    `first_content` (comments `: …`, or Anthropic's `event: ping`)."""
    times = []
    for arrived, line in lines:
        if first_content in line:
            break
        if line.startswith(":") or line == "event: ping":
            times.append(arrived)
    return times


async def timed_lines(url: str, path: str, **request: Any) -> list[tuple[float, str]]:
    """Every non-empty line of a streamed response with its arrival time since the request."""
    start = time.monotonic()
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as http,
        http.stream("POST", path, **request) as response,
    ):
        assert response.status_code == 200
        return [(time.monotonic() - start, line) async for line in response.aiter_lines() if line]


def assert_on_a_clock(times: list[float]) -> None:
    """Several keep-alives during the silence, spread over it (not a burst at its end)."""
    assert len(times) >= 3, times
    assert times[-1] - times[0] >= 2 * INTERVAL_S, times


@pytest.mark.parametrize("api", list(REQUESTS))
async def test_text_streams_keep_alive_while_the_prompt_prefills(api: str) -> None:
    engine = FakeEngine(reply="Zq", prefill_delay_s=SILENCE_S, context_length=4096)
    app = create_app(Settings(keepalive_interval_s=INTERVAL_S), EnginePool([engine]))
    path, body = REQUESTS[api]
    with serve(app) as url:
        lines = await timed_lines(url, path, json=body)
    assert engine.tokens_generated == 2  # the reply came after the silence
    assert_on_a_clock(keepalive_times(lines, '"Z'))


async def test_transcription_streams_keep_alive_while_the_audio_is_decoded() -> None:
    engine = FakeSpeechEngine(segment_delay_s=SILENCE_S)
    app = create_app(Settings(keepalive_interval_s=INTERVAL_S), EnginePool([engine]))
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    form = {"model": "fake-whisper", "stream": "true"}
    files = {"file": ("a.wav", encode(tone, "wav", "pcm_s16le"))}
    with serve(app) as url:
        lines = await timed_lines(url, "/v1/audio/transcriptions", data=form, files=files)
    assert_on_a_clock(keepalive_times(lines, "Hello"))
