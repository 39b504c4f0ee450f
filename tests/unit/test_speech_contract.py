"""The /v1/audio/speech contract on a scripted text-to-speech engine: every response format
through the strict SDK (decoded back with PyAV), audio streamed while it is made (real uvicorn),
SSE events, cancellation, and every refusal as an OpenAI-shaped 4xx before any engine work."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import AsyncIterator, Iterator

import av
import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from engines.pool import EnginePool
from engines.tts.voices import OPENAI_VOICES, openai_aliases
from server.app import create_app
from server.settings import Settings
from tests.fake_tts import SAMPLE_RATE, FakeTTSEngine
from tests.fakes import FakeEngine
from tests.servers import serve, wait_until

MODEL = "fake-kokoro"
TWO_SENTENCES = "Hello there. General Kenobi!"
EXPECTED_SAMPLES = 240 * (len("Hello there.") + len("General Kenobi!"))


@pytest.fixture
def tts() -> FakeTTSEngine:
    return FakeTTSEngine()


@pytest.fixture
async def speech_http(tts: FakeTTSEngine) -> AsyncIterator[httpx.AsyncClient]:
    pool = EnginePool([FakeEngine(), tts])
    app = create_app(Settings(max_body_bytes=64 * 1024), pool)
    await pool.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http
    await pool.drain(timeout=1)


@pytest.fixture
def sdk(speech_http: httpx.AsyncClient) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url="http://127.0.0.1/v1",
        api_key="unused",
        http_client=speech_http,
        _strict_response_validation=True,
        max_retries=0,
    )


def decode(data: bytes) -> tuple[int, int]:
    """(sample rate, samples) of an audio file, read with PyAV."""
    with av.open(io.BytesIO(data)) as container:
        rate = container.streams.audio[0].sample_rate
        return rate, sum(frame.samples for frame in container.decode(audio=0))


@pytest.mark.parametrize(
    ("response_format", "content_type", "rate"),
    [
        ("mp3", "audio/mpeg", SAMPLE_RATE),
        ("opus", "audio/ogg", 48000),
        ("aac", "audio/aac", SAMPLE_RATE),
        ("flac", "audio/flac", SAMPLE_RATE),
        ("wav", "audio/wav", SAMPLE_RATE),
    ],
)
async def test_every_format_through_the_sdk(
    sdk: AsyncOpenAI, response_format: str, content_type: str, rate: int
) -> None:
    response = await sdk.audio.speech.create(
        model=MODEL,
        input=TWO_SENTENCES,
        voice="jf_alpha",
        response_format=response_format,  # type: ignore[arg-type]
    )
    assert response.response.headers["content-type"].startswith(content_type)
    decoded_rate, samples = decode(response.content)
    assert decoded_rate == rate
    expected = EXPECTED_SAMPLES * rate // SAMPLE_RATE
    # Lossy codecs pad to whole frames (and mp3/aac add priming samples): at most a few frames.
    assert expected <= samples <= expected + 3 * 1152 * rate // SAMPLE_RATE


async def test_mp3_is_the_default_and_pcm_is_raw_16_bit(
    sdk: AsyncOpenAI, tts: FakeTTSEngine
) -> None:
    default = await sdk.audio.speech.create(model=MODEL, input=TWO_SENTENCES, voice="jf_alpha")
    assert default.response.headers["content-type"] == "audio/mpeg"
    pcm = await sdk.audio.speech.create(
        model=MODEL, input=TWO_SENTENCES, voice="jm_kumo", response_format="pcm", speed=2.0
    )
    assert len(pcm.content) == 2 * (EXPECTED_SAMPLES // 2)
    samples = np.frombuffer(pcm.content, "<i2")
    assert 0.25 < np.abs(samples).max() / 32767 <= 0.31  # the fake's 0.3 tone, not clipped
    assert (tts.requests[-1].voice, tts.requests[-1].speed) == ("jm_kumo", 2.0)
    assert tts.requests[-1].text == TWO_SENTENCES


async def test_voice_as_an_object_and_ignored_instructions(
    speech_http: httpx.AsyncClient, tts: FakeTTSEngine
) -> None:
    response = await speech_http.post(
        "/v1/audio/speech",
        json={
            "model": MODEL,
            "input": "Hi.",
            "voice": {"id": "jm_kumo"},
            "instructions": "cheerful",
            "response_format": "wav",
        },
    )
    assert response.status_code == 200
    assert response.headers["x-mlxd-ignored-fields"] == "instructions"
    assert response.headers["x-request-id"].startswith("speech-")
    assert response.content[:4] == b"RIFF" and tts.requests[-1].voice == "jm_kumo"


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    return str(error["message"])


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": "   \n"}, "input"),
        ({"input": "\x00"}, "input"),  # nothing to speak: was a 200 with an empty mp3
        ({"input": "\u200b\ufeff \x01"}, "input"),  # zero-width space, BOM, a control
        ({"input": "a" * 4097}, "input"),
        ({"voice": "aria"}, "voice"),  # neither the model's nor an OpenAI voice
        ({"response_format": "ogg"}, "response_format"),
        ({"stream_format": "chunks"}, "stream_format"),
        ({"speed": 0.1}, "speed"),
        ({"speed": 5}, "speed"),
        ({"speed": "fast"}, "speed"),
        ({"model": "fake"}, "model"),  # a chat model
    ],
)
async def test_bad_requests_are_400_naming_the_field(
    speech_http: httpx.AsyncClient, tts: FakeTTSEngine, change: dict[str, object], param: str
) -> None:
    body = {"model": MODEL, "input": "Hello.", "voice": "jf_alpha", **change}
    message = assert_openai_error(await speech_http.post("/v1/audio/speech", json=body), 400, param)
    if param == "voice":
        assert "jf_alpha" in message  # names the voices there are
    if param == "model":
        assert "text-to-speech" in message
    assert tts.requests == []  # refused before any engine work


async def test_missing_fields_and_unknown_model(
    speech_http: httpx.AsyncClient, sdk: AsyncOpenAI
) -> None:
    for missing in ("model", "input", "voice"):
        body = {"model": MODEL, "input": "Hello.", "voice": "jf_alpha"}
        del body[missing]
        assert_openai_error(await speech_http.post("/v1/audio/speech", json=body), 400, missing)
    with pytest.raises(NotFoundError):
        await sdk.audio.speech.create(model="nope", input="Hello.", voice="jf_alpha")
    with pytest.raises(BadRequestError):
        await sdk.audio.speech.create(model=MODEL, input="Hello.", voice="aria")


async def test_the_tts_model_on_chat_is_400(speech_http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    message = assert_openai_error(
        await speech_http.post("/v1/chat/completions", json=body), 400, "model"
    )
    assert MODEL in message and "text-to-speech" in message


async def test_a_failure_before_any_audio_is_an_openai_error(
    speech_http: httpx.AsyncClient, tts: FakeTTSEngine
) -> None:
    tts.fail_at_piece = 0
    body = {"model": MODEL, "input": TWO_SENTENCES, "voice": "jf_alpha"}
    response = await speech_http.post("/v1/audio/speech", json=body)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "engine_failed"


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
async def test_an_input_with_nothing_to_speak_is_a_400(
    speech_http: httpx.AsyncClient, stream_format: str
) -> None:
    """Punctuation the model reads no sound in: no audio at all was a 200 with a 0-byte mp3."""
    body = {"model": MODEL, "voice": "jf_alpha", "stream_format": stream_format}
    response = await speech_http.post("/v1/audio/speech", json={**body, "input": "() [] | <>"})
    assert "nothing to speak" in assert_openai_error(response, 400, "input")
    # A silent first piece is no refusal when a later one speaks.
    response = await speech_http.post("/v1/audio/speech", json={**body, "input": "... Hello."})
    assert response.status_code == 200 and response.content


# What OpenAI's names stand for on the fake's two voices (one female, one male).
FAKE_MODEL_ALIASES = {
    **dict.fromkeys(["alloy", "coral", "nova", "sage", "shimmer", "marin"], "jf_alpha"),
    **dict.fromkeys(["ash", "ballad", "echo", "fable", "onyx", "verse", "cedar"], "jm_kumo"),
}


async def test_openai_voice_names_speak_with_the_voice_they_stand_for(
    sdk: AsyncOpenAI, tts: FakeTTSEngine
) -> None:
    for name, voice in [("nova", "jf_alpha"), ("onyx", "jm_kumo"), ("jm_kumo", "jm_kumo")]:
        response = await sdk.audio.speech.create(
            model=MODEL, input="Hello.", voice=name, response_format="pcm"
        )
        assert response.content and tts.requests[-1].voice == voice


def test_openai_names_prefer_kokoros_namesakes_then_the_packaged_voices() -> None:
    full = ["af_alloy", "af_heart", "af_nova", "am_echo", "am_michael", "bm_fable", "jf_alpha"]
    aliases = openai_aliases(full)
    assert aliases["alloy"] == "af_alloy" and aliases["nova"] == "af_nova"
    assert aliases["echo"] == "am_echo" and aliases["fable"] == "bm_fable"
    assert aliases["coral"] == "af_heart" and aliases["onyx"] == "am_michael"
    packaged = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
    aliases = openai_aliases(packaged)
    assert sorted(aliases) == sorted(OPENAI_VOICES)  # all thirteen resolve
    assert {aliases[n] for n in ["alloy", "coral", "nova", "sage"]} == set(packaged[:4])
    assert {aliases[n] for n in ["ash", "echo", "onyx", "cedar"]} == {"jm_kumo"}
    assert openai_aliases(["nova", "jm_kumo"]).get("nova") is None  # the model's own name wins
    assert openai_aliases(["xx_other"]) == {}


async def test_voices_are_listed(speech_http: httpx.AsyncClient) -> None:
    response = await speech_http.get("/v1/audio/voices")
    assert response.status_code == 200
    voices = response.json()["data"]
    assert [(v["id"], v["model"], v["default"], v.get("alias_of")) for v in voices] == [
        ("jf_alpha", MODEL, True, None),
        ("jm_kumo", MODEL, False, None),
        *[(name, MODEL, False, FAKE_MODEL_ALIASES[name]) for name in OPENAI_VOICES],
    ]
    assert (await speech_http.get(f"/v1/audio/voices?model={MODEL}")).json()["data"] == voices
    assert_openai_error(await speech_http.get("/v1/audio/voices?model=fake"), 400, "model")
    models = (await speech_http.get("/v1/models")).json()["data"]
    assert MODEL in {model["id"] for model in models}


# -- streaming, on a real server -----------------------------------------------------------------

LONG_INPUT = " ".join(f"Sentence number {n} is here." for n in range(40))


@pytest.fixture
def slow_server() -> Iterator[tuple[str, FakeTTSEngine]]:
    engine = FakeTTSEngine(piece_delay_s=0.05)
    with serve(create_app(Settings(), EnginePool([engine]))) as url:
        yield url, engine


def sse_events(body: str) -> list[dict]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def strict_sdk(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"{url}/v1", api_key="unused", _strict_response_validation=True, max_retries=0
    )


async def test_audio_streams_while_it_is_made(slow_server: tuple[str, FakeTTSEngine]) -> None:
    url, engine = slow_server
    started = time.monotonic()
    arrivals: list[tuple[float, int]] = []
    chunks: list[bytes] = []
    async with (
        strict_sdk(url) as sdk,
        sdk.audio.speech.with_streaming_response.create(
            model=MODEL, input=LONG_INPUT, voice="jf_alpha", response_format="pcm"
        ) as response,
    ):
        async for chunk in response.iter_bytes():
            arrivals.append((time.monotonic() - started, engine.pieces_made))
            chunks.append(chunk)
    assert engine.pieces_made == 40
    first_at, made_by_then = arrivals[0]
    assert made_by_then < 10  # the first sentence's audio came long before the last was made
    assert first_at < 1.0 and arrivals[-1][0] > 1.5
    audio = b"".join(chunks)
    assert len(audio) == 2 * 240 * sum(len(f"Sentence number {n} is here.") for n in range(40))


async def test_sse_events(slow_server: tuple[str, FakeTTSEngine]) -> None:
    url, _ = slow_server
    body = {
        "model": MODEL,
        "input": TWO_SENTENCES,
        "voice": "jf_alpha",
        "response_format": "pcm",
        "stream_format": "sse",
    }
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/audio/speech", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [e["type"] for e in events] == ["speech.audio.delta"] * 2 + ["speech.audio.done"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(audio) == 2 * EXPECTED_SAMPLES
    usage = events[-1]["usage"]
    assert set(usage) == {"input_tokens", "output_tokens", "total_tokens"}
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0


async def test_sse_reports_a_failure_in_stream(slow_server: tuple[str, FakeTTSEngine]) -> None:
    url, engine = slow_server
    engine.fail_at_piece = 1
    body = {"model": MODEL, "input": TWO_SENTENCES, "voice": "jf_alpha", "stream_format": "sse"}
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/audio/speech", json=body)
    events = sse_events(response.text)
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["error"]["code"] == "engine_failed"


async def test_an_audio_failure_after_audio_aborts_the_response(
    slow_server: tuple[str, FakeTTSEngine],
) -> None:
    """Not a silently truncated file: the chunked body never completes."""
    url, engine = slow_server
    engine.fail_at_piece = 1
    body = {"model": MODEL, "input": TWO_SENTENCES, "voice": "jf_alpha", "response_format": "pcm"}
    async with httpx.AsyncClient(base_url=url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/v1/audio/speech", json=body)
    assert await wait_until(lambda: engine.active == 0, timeout=3)


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
async def test_a_client_that_leaves_stops_the_engine_work(
    slow_server: tuple[str, FakeTTSEngine], stream_format: str
) -> None:
    url, engine = slow_server
    body = {
        "model": MODEL,
        "input": LONG_INPUT,
        "voice": "jf_alpha",
        "response_format": "mp3",
        "stream_format": stream_format,
    }
    async with (
        httpx.AsyncClient(base_url=url) as http,
        http.stream("POST", "/v1/audio/speech", json=body) as response,
    ):
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            break  # leaving the block closes the connection mid-stream
    assert await wait_until(lambda: engine.active == 0, timeout=3)
    assert engine.pieces_made < 20


@pytest.mark.parametrize("response_format", ["mp3", "opus", "aac", "flac", "wav"])
def test_an_empty_piece_does_not_end_the_file(response_format: str) -> None:
    """A piece with no phonemes (punctuation only) gives no samples; the file goes on."""
    from engines.tts.encode import AudioEncoder
    from tests.fake_tts import tone

    encoder = AudioEncoder(response_format, SAMPLE_RATE)
    empty = np.zeros(0, np.float32)
    pieces = [empty, tone(SAMPLE_RATE), empty, tone(SAMPLE_RATE)]
    data = b"".join(encoder.encode(piece) for piece in pieces) + encoder.finish()
    rate, samples = decode(data)
    assert samples >= 2 * rate  # both seconds are in it
