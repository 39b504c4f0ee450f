"""End-to-end: the embedded SmolLM2-135M-Instruct through the official SDK in strict mode."""

from __future__ import annotations

import time

import httpx
import pytest

from engines.weights.embedded import SMOLLM2
from tests.helpers import LiveServer

MODEL = SMOLLM2.name
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_paris_non_streamed(live: LiveServer) -> None:
    completion = live.client().chat.completions.create(
        model=MODEL,
        messages=FRANCE,
        temperature=0,  # type: ignore[arg-type]
    )
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens > 10


def test_paris_streamed_with_usage(live: LiveServer) -> None:
    stream = live.client().chat.completions.create(
        model=MODEL,
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_equals_non_streamed(live: LiveServer) -> None:
    client = live.client()
    ask = {"model": MODEL, "messages": FRANCE, "temperature": 0, "max_tokens": 30}
    whole = client.chat.completions.create(**ask).choices[0].message.content  # type: ignore[call-overload]
    parts = client.chat.completions.create(stream=True, **ask)  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == whole


def test_same_seed_same_output(live: LiveServer) -> None:
    client = live.client()
    ask = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
        "temperature": 1.0,
        "max_tokens": 24,
    }
    first = client.chat.completions.create(seed=1234, **ask).choices[0].message.content  # type: ignore[call-overload]
    again = client.chat.completions.create(seed=1234, **ask).choices[0].message.content  # type: ignore[call-overload]
    other = client.chat.completions.create(seed=999, **ask).choices[0].message.content  # type: ignore[call-overload]
    assert first == again
    assert first != other


def test_stop_string_is_not_leaked(live: LiveServer) -> None:
    client = live.client()
    full = (
        client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            temperature=0,  # type: ignore[arg-type]
        )
        .choices[0]
        .message.content
    )
    assert full and " of" in full
    for stream in (False, True):
        response = client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            temperature=0,
            stop=[" of"],
            stream=stream,  # type: ignore[call-overload]
        )
        if stream:
            chunks = list(response)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reason = next(
                c.choices[0].finish_reason
                for c in chunks
                if c.choices and c.choices[0].finish_reason
            )
        else:
            text, reason = response.choices[0].message.content, response.choices[0].finish_reason
        assert text == full[: full.index(" of")]
        assert reason == "stop"


def test_non_ascii_deltas_are_whole_characters(live: LiveServer) -> None:
    stream = live.client().chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Écris une phrase en français avec des accents: é è à ç ô."}
        ],  # type: ignore[arg-type]
        temperature=0,
        max_tokens=40,
        stream=True,
    )
    deltas = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert any(ord(ch) > 127 for d in deltas for ch in d), deltas
    assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_generation(live: LiveServer, stream: bool) -> None:
    engine = live.pool.engine(MODEL)
    before = engine.tokens_generated  # type: ignore[attr-defined]
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story about dragons."}],
        "max_tokens": 400,
        "temperature": 0.7,
        "stream": stream,
    }
    if stream:
        with (
            httpx.Client(base_url=live.url) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            for seen, _ in enumerate(response.iter_lines()):
                if seen > 6:
                    break
    else:
        with httpx.Client(base_url=live.url, timeout=1.0) as http, pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=body)
    deadline = time.monotonic() + 2
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.active == 0
    assert engine.tokens_generated - before < 400  # type: ignore[attr-defined]


def test_follow_up_turn_reuses_the_history(live: LiveServer) -> None:
    client = live.client()
    history = [
        {"role": "system", "content": "You are a helpful assistant for a museum."},
        *[
            {"role": role, "content": f"Exhibit {i}: a bronze statue from the year {1500 + i}."}
            for i in range(12)
            for role in ("user", "assistant")
        ],
        {"role": "user", "content": "Which exhibit is the oldest?"},
    ]
    first = client.chat.completions.create(
        model=MODEL,
        messages=history,
        temperature=0,
        max_tokens=20,  # type: ignore[arg-type]
    )
    answer = first.choices[0].message.content or ""
    follow_up = [
        *history,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And the newest?"},
    ]
    second = client.chat.completions.create(
        model=MODEL,
        messages=follow_up,
        temperature=0,
        max_tokens=10,  # type: ignore[arg-type]
    )
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    shared = first.usage.prompt_tokens + first.usage.completion_tokens
    assert details.cached_tokens >= 0.9 * shared, (details.cached_tokens, shared)
    stats = httpx.get(f"{live.url}/health").json()["engines"][MODEL]
    assert stats["prefix_cache_hits"] >= 1
