"""`POST /v1/audio/speech` (text to speech) and `GET /v1/audio/voices`.

Order of checks, all before any engine work: body (size, JSON), fields (400 naming the field:
empty or over-long input, unknown response_format or stream_format, speed out of range), model
(404 unknown, 400 not a text-to-speech model), voice (400 naming the model's voices; OpenAI's
voice names are taken as the model's voice each stands for, engines/tts/voices.py). The route
then waits for the engine's first audio (or its end), so a failure before any audio is still a
plain error response, and an input the model reads no sound in is a 400; after that the audio
streams as it is made, one encoded piece per sentence: `stream_format` "audio" sends the file's
bytes (chunked), "sse" sends `speech.audio.delta` events (base64 of the same bytes) and
`speech.audio.done`.

Invariant: a synthesis stream is read to its end or cancelled; a client that goes away cancels
it, and the engine stops before its next sentence.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from engines.kinds import TTS, TTSEngine
from engines.tts.encode import AudioEncoder, media_type
from engines.tts.voices import openai_aliases
from engines.types import AudioChunk, ErrorEvent, Event, SynthesisDone, SynthesisRequest
from server import logs, sse
from server.body import read_json_object, validate
from server.deps import PoolDep, SettingsDep
from server.errors import APIError, from_engine_error
from server.generation import EventSource
from server.schemas.common import documented_body, response_headers
from server.schemas.speech import IGNORED_FIELDS, SpeechBody
from server.serving import collected_or_gone, error_response

logger = logging.getLogger(__name__)
router = APIRouter()


class SynthesisFailed(RuntimeError):
    """The engine failed after audio was sent: the response is aborted, not left truncated."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@router.post("/v1/audio/speech", openapi_extra=documented_body(SpeechBody))
async def create_speech(request: Request, settings: SettingsDep, pool: PoolDep) -> Response:
    body = await read_json_object(request, settings.max_body_bytes)
    form = validate(SpeechBody, body)
    engine: TTSEngine = await pool.acquire(form.model, TTS)
    assert engine.info is not None
    aliases = openai_aliases(engine.info.voices)
    voice = engine.check_voice(aliases.get(form.voice_name, form.voice_name))
    request_id = f"speech-{uuid.uuid4().hex}"
    logs.request_id.set(request_id)
    stream = engine.submit(SynthesisRequest(request_id, form.input, voice, form.speed))
    headers = response_headers(request_id, body, SpeechBody, IGNORED_FIELDS)
    logger.info(
        "%s speech model=%r chars=%d voice=%s format=%s stream_format=%s",
        request_id,
        form.model,
        len(form.input),
        voice,
        form.response_format,
        form.stream_format,
    )
    events = aiter(stream)
    first = await collected_or_gone(request, _first_audio(events), [stream], request_id)
    if isinstance(first, Response):
        return first
    if isinstance(first, ErrorEvent):
        return error_response(first.error, headers)
    if isinstance(first, SynthesisDone):  # every piece was silent: no file to send
        raise APIError(
            400,
            "input has nothing to speak: the model reads no sound in it",
            param="input",
            code="invalid_value",
        )
    encoder = AudioEncoder(form.response_format, engine.info.sample_rate)
    pieces = _encoded(first, events, encoder, stream, request_id)
    if form.stream_format == "sse":
        return sse.event_stream(_sse_events(pieces), headers, settings)
    return StreamingResponse(
        _audio_bytes(pieces), media_type=media_type(form.response_format), headers=headers
    )


@router.get("/v1/audio/voices")
async def list_voices(pool: PoolDep, model: str | None = None) -> dict[str, Any]:
    """The voices of one text-to-speech model (`?model=`), or of every one configured (each is
    loaded if need be: its voices are in its checkpoint): the model's own, then the OpenAI
    names it accepts, each with `alias_of` naming the voice it speaks with."""
    names = [model] if model else [m.name for m in pool.models() if m.kind == TTS.name]
    data: list[dict[str, Any]] = []
    for name in names:
        engine: TTSEngine = await pool.acquire(name, TTS)
        assert engine.info is not None
        data.extend(
            {"id": voice, "object": "voice", "model": engine.info.name, "default": default}
            for voice in engine.info.voices
            for default in [voice == engine.info.default_voice]
        )
        data.extend(
            {
                "id": alias,
                "object": "voice",
                "model": engine.info.name,
                "default": False,
                "alias_of": voice,
            }
            for alias, voice in openai_aliases(engine.info.voices).items()
        )
    return {"object": "list", "data": data}


async def _first_audio(events: AsyncIterator[Event]) -> Event:
    """The first chunk that holds samples, else the stream's last event. A piece the model
    reads no sound in (punctuation) makes an empty chunk; an input of nothing else made a
    0-byte mp3, opus or aac body."""
    while True:
        event = await anext(events)
        if not isinstance(event, AudioChunk) or event.samples.size:
            return event


async def _encoded(
    first: Event,
    events: AsyncIterator[Event],
    encoder: AudioEncoder,
    stream: EventSource,
    request_id: str,
) -> AsyncIterator[bytes | SynthesisDone]:
    """The output file's bytes as each sentence's audio comes (encoded off the event loop),
    then the SynthesisDone. Cancels the synthesis if the reader stops early."""
    ended = False
    try:
        event: Event | None = first
        while event is not None:
            if isinstance(event, AudioChunk):
                yield await asyncio.to_thread(encoder.encode, event.samples)
            elif isinstance(event, SynthesisDone):
                yield await asyncio.to_thread(encoder.finish)
                ended = True
                yield event
                return
            elif isinstance(event, ErrorEvent):
                ended = True
                logger.error("%s failed in stream: %s", request_id, event.error)
                raise SynthesisFailed(event.error)
            event = await anext(events, None)
    finally:
        if not ended:
            stream.cancel()
            logger.info("%s stream closed early; cancelling", request_id)


async def _audio_bytes(pieces: AsyncIterator[bytes | SynthesisDone]) -> AsyncIterator[bytes]:
    async for piece in pieces:
        if isinstance(piece, bytes) and piece:
            yield piece


async def _sse_events(
    pieces: AsyncIterator[bytes | SynthesisDone],
) -> AsyncIterator[bytes | sse.Last]:
    """`speech.audio.delta` per encoded piece, then `speech.audio.done` (or the error event) as
    the stream's `Last` frame."""
    try:
        async for piece in pieces:
            if isinstance(piece, SynthesisDone):
                usage = {"input_tokens": piece.tokens, "output_tokens": 0}
                usage["total_tokens"] = piece.tokens
                yield sse.Last(sse.data({"type": "speech.audio.done", "usage": usage}))
            elif piece:
                audio = base64.b64encode(piece).decode("ascii")
                yield sse.data({"type": "speech.audio.delta", "audio": audio})
    except SynthesisFailed as exc:
        yield sse.Last(sse.data(from_engine_error(exc.error).body()))
