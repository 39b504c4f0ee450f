"""The /v1/audio contract on a scripted speech engine: every response format through the strict
SDK, streaming events, and every refusal as an OpenAI-shaped 4xx before any engine work."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI, NotFoundError

from engines.kinds import detect_kind
from tests.fakes import FakeSpeechEngine
from tests.speech import encode, silence

MODEL = "fake-whisper"


@pytest.fixture(scope="module")
def wav() -> bytes:
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(48000) / 16000).astype(np.float32)
    return encode(tone, "wav", "pcm_s16le")


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]
    return error


async def test_json_is_the_default(client: AsyncOpenAI, wav: bytes) -> None:
    result = await client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav))
    assert result.text == "Hello there. General Kenobi."
    assert result.usage is not None and result.usage.type == "duration"
    assert result.usage.seconds == pytest.approx(3.0)


async def test_text_srt_vtt(client: AsyncOpenAI, wav: bytes) -> None:
    text = await client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav), response_format="text"
    )
    assert text == "Hello there. General Kenobi.\n"
    srt = await client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav), response_format="srt"
    )
    assert srt == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n00:00:01,500 --> 00:00:03,250\nGeneral Kenobi.\n"
    )
    vtt = await client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav), response_format="vtt"
    )
    assert vtt == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
        "00:00:01.500 --> 00:00:03.250\nGeneral Kenobi.\n"
    )


async def test_verbose_json(client: AsyncOpenAI, wav: bytes) -> None:
    result = await client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav), response_format="verbose_json"
    )
    assert result.language == "english"
    assert result.duration == pytest.approx(3.0)
    assert result.text == "Hello there. General Kenobi."
    assert result.segments is not None
    assert [(s.id, s.start, s.end) for s in result.segments] == [(0, 0.0, 1.5), (1, 1.5, 3.25)]
    extra = result.model_extra or {}
    assert extra["task"] == "transcribe"


async def test_streamed_events_parse_in_the_sdk(client: AsyncOpenAI, wav: bytes) -> None:
    stream = await client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav), stream=True)
    events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert deltas == ["Hello there.", " General Kenobi."]
    assert events[-1].type == "transcript.text.done"
    assert events[-1].text == "Hello there. General Kenobi."


async def test_form_fields_reach_the_engine(
    client: AsyncOpenAI, fake_speech: FakeSpeechEngine, wav: bytes
) -> None:
    await client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav), language="en", prompt="Kenobi", temperature=0.4
    )
    request = fake_speech.requests[-1]
    assert (request.language, request.prompt, request.temperature) == ("en", "Kenobi", 0.4)
    assert request.content_frames == 300  # 3 s at 100 frames per second
    assert request.mel.shape == (300 + 3000, 80)


async def test_unknown_fields_are_reported(http: httpx.AsyncClient, wav: bytes) -> None:
    data = {"model": MODEL, "chunking_strategy": "auto", "colour": "blue"}
    response = await http.post(
        "/v1/audio/transcriptions", data=data, files={"file": ("a.wav", wav)}
    )
    assert response.status_code == 200
    assert response.headers["x-mlxd-ignored-fields"] == "chunking_strategy,colour"


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({}, "model"),
        ({"model": MODEL, "response_format": "yaml"}, "response_format"),
        ({"model": MODEL, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "temperature": "1.5"}, "temperature"),
        ({"model": MODEL, "temperature": "nan"}, "temperature"),
        ({"model": MODEL, "language": "klingon"}, "language"),
        ({"model": MODEL, "language": "de"}, "language"),  # English-only model
        ({"model": MODEL, "timestamp_granularities[]": "word"}, "timestamp_granularities"),
        ({"model": MODEL, "timestamp_granularities[]": "letter"}, "timestamp_granularities[0]"),
        ({"model": MODEL, "prompt": "x" * 5000}, "prompt"),
        ({"model": "fake"}, "model"),  # a chat model
    ],
)
async def test_bad_fields_are_400(
    http: httpx.AsyncClient, wav: bytes, data: dict[str, str], param: str
) -> None:
    response = await http.post(
        "/v1/audio/transcriptions", data=data, files={"file": ("a.wav", wav)}
    )
    assert_openai_error(response, 400, param)


async def test_unknown_model_is_404(client: AsyncOpenAI, wav: bytes) -> None:
    with pytest.raises(NotFoundError):
        await client.audio.transcriptions.create(model="whisper-9", file=("a.wav", wav))


async def test_english_only_model_cannot_translate(http: httpx.AsyncClient, wav: bytes) -> None:
    # (Raw HTTP: the SDK marks `audio.translations` deprecated, and warnings fail tests here.)
    response = await http.post(
        "/v1/audio/translations", data={"model": MODEL}, files={"file": ("a.wav", wav)}
    )
    assert "English-only" in assert_openai_error(response, 400, "model")["message"]


@pytest.mark.parametrize("fake_speech", [FakeSpeechEngine(multilingual=True, detected="de")])
async def test_verbose_translation_language_is_english(http: httpx.AsyncClient, wav: bytes) -> None:
    """OpenAI's verbose translation: `language` is the output's, always english; a verbose
    transcription names the language heard."""
    data = {"model": MODEL, "response_format": "verbose_json"}
    files = {"file": ("a.wav", wav)}
    translated = await http.post("/v1/audio/translations", data=data, files=files)
    transcribed = await http.post("/v1/audio/transcriptions", data=data, files=files)
    assert translated.status_code == transcribed.status_code == 200, translated.text
    assert (translated.json()["task"], translated.json()["language"]) == ("translate", "english")
    assert transcribed.json()["language"] == "german"


async def test_speech_model_on_chat_is_400(http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    response = await http.post("/v1/chat/completions", json=body)
    assert "speech-to-text" in assert_openai_error(response, 400, "model")["message"]


@pytest.mark.parametrize(
    "payload",
    [b"", b"not audio at all" * 100, b"RIFF\x00\x00\x00\x00WAVEfmt ", json.dumps({}).encode()],
)
async def test_unusable_audio_is_400(http: httpx.AsyncClient, payload: bytes) -> None:
    response = await http.post(
        "/v1/audio/transcriptions", data={"model": MODEL}, files={"file": ("a.wav", payload)}
    )
    assert assert_openai_error(response, 400, "file")["code"] == "invalid_audio"


async def test_missing_file_and_wrong_content_type(http: httpx.AsyncClient) -> None:
    no_file = {"model": (None, MODEL)}  # multipart, with a text field only
    response = await http.post("/v1/audio/transcriptions", files=no_file)
    assert_openai_error(response, 400, "file")
    response = await http.post("/v1/audio/transcriptions", json={"model": MODEL})
    assert_openai_error(response, 400, None)
    response = await http.post(
        "/v1/audio/transcriptions",
        content=b"--x\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("content_type", "content", "reason"),
    [
        ("multipart/form-data", b"x", "Missing boundary"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n'
         b"--x--\r\n", '"name" must be provided'),
        ("multipart/form-data; boundary=x",
         b'--x\r\nContent-Disposition: form-data; name="model"; filename="m"\r\n\r\nv\r\n'
         b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nv\r\n'
         b"--x--\r\n", "Too many files"),
    ],
)  # fmt: skip
async def test_a_malformed_multipart_body_is_a_400_saying_so(
    http: httpx.AsyncClient, content_type: str, content: bytes, reason: str
) -> None:
    """Starlette's own parser errors used to come out as `http_error` with the URL appended."""
    response = await http.post(
        "/v1/audio/transcriptions", content=content, headers={"content-type": content_type}
    )
    error = assert_openai_error(response, 400, None)
    assert error["code"] == "invalid_multipart"
    assert error["message"].startswith("Invalid multipart/form-data body: ")
    assert reason in error["message"]


async def test_too_long_audio_is_400(http: httpx.AsyncClient) -> None:
    minute_and_more = encode(silence(61), "ogg", "libopus", rate=48000)
    response = await http.post(
        "/v1/audio/transcriptions",
        data={"model": MODEL},
        files={"file": ("a.ogg", minute_and_more)},
    )
    assert "longer than the limit" in assert_openai_error(response, 400, "file")["message"]


async def test_oversized_upload_is_413(http: httpx.AsyncClient) -> None:
    # The fixture's limit is 256 KiB; a file just over it fits the body allowance for the form.
    response = await http.post(
        "/v1/audio/transcriptions",
        data={"model": MODEL},
        files={"file": ("a.wav", b"\0" * (256 * 1024 + 1))},
    )
    assert assert_openai_error(response, 413, "file")["code"] == "file_too_large"
    response = await http.post(
        "/v1/audio/transcriptions",
        data={"model": MODEL},
        files={"file": ("a.wav", b"\0" * (3 * 1024 * 1024))},
    )
    assert assert_openai_error(response, 413, None)["code"] == "body_too_large"


async def test_engine_failure_is_an_openai_error(
    http: httpx.AsyncClient, fake_speech: FakeSpeechEngine, wav: bytes
) -> None:
    fake_speech.fail = True
    response = await http.post(
        "/v1/audio/transcriptions", data={"model": MODEL}, files={"file": ("a.wav", wav)}
    )
    assert_openai_error(response, 500, None)
    assert fake_speech.active == 0


async def test_models_lists_the_speech_model(client: AsyncOpenAI) -> None:
    ids = [model.id async for model in client.models.list()]
    assert ids == ["fake", MODEL]


def test_a_whisper_store_entry_needs_no_kind(tmp_path: Path) -> None:
    """A models-file entry `source = "whisper-tiny.en"` without `kind` is a speech model: its
    store entry's mlxd.json says so, as Kokoro's says tts (it was served as a chat model, and
    transcriptions named it one)."""
    entry = tmp_path / "whisper-tiny.en"
    entry.mkdir()
    (entry / "config.json").write_text(json.dumps({"n_mels": 80, "n_vocab": 51864}))
    (entry / "mlxd.json").write_text(json.dumps({"kind": "speech", "architecture": "whisper"}))
    assert detect_kind(entry) == "speech"
    (entry / "mlxd.json").unlink()
    assert detect_kind(entry) == "chat"
