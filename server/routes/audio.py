"""`POST /v1/audio/transcriptions` and `POST /v1/audio/translations` (multipart uploads).

Order of checks, all before any engine work: body size (413), multipart shape and fields (400),
file size (413), model and language (404/400), then decoding the audio off the event loop (400
when it is not usable audio). Only then is the request queued on the speech engine. A client
that goes away cancels its transcription.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message

from engines.asr.audio import AudioDecodeError, content_frames, decode_audio, log_mel
from engines.kinds import SPEECH
from engines.pool import EnginePool
from engines.types import (
    ErrorEvent,
    Segment,
    TranscriptionDone,
    TranscriptionRequest,
)
from server import logs, sse, transcripts
from server.body import read_body, validate
from server.deps import PoolDep, SettingsDep
from server.errors import APIError, from_engine_error
from server.generation import EventSource
from server.schemas.audio import (
    IGNORED_FIELDS,
    TranscriptionForm,
    TranscriptionUpload,
    TranslationForm,
    TranslationUpload,
)
from server.schemas.common import documented_body, response_headers
from server.serving import cancel_on_close, collected_or_gone, error_response
from server.settings import Settings

logger = logging.getLogger(__name__)
router = APIRouter()

MULTIPART_OVERHEAD = 1 << 20  # room for the form's other fields and part headers
MAX_FORM_FIELDS = 64


@router.post(
    "/v1/audio/transcriptions",
    openapi_extra=documented_body(TranscriptionUpload, "multipart/form-data"),
)
async def create_transcription(request: Request, settings: SettingsDep, pool: PoolDep) -> Response:
    return await _handle(request, settings, pool, "transcribe")


@router.post(
    "/v1/audio/translations",
    openapi_extra=documented_body(TranslationUpload, "multipart/form-data"),
)
async def create_translation(request: Request, settings: SettingsDep, pool: PoolDep) -> Response:
    return await _handle(request, settings, pool, "translate")


async def _handle(request: Request, settings: Settings, pool: EnginePool, task: str) -> Response:
    fields, audio = await _read_form(request, settings.max_audio_bytes)
    schema = TranscriptionForm if task == "transcribe" else TranslationForm
    form = validate(schema, fields)
    words = isinstance(form, TranscriptionForm) and "word" in form.timestamp_granularities
    if words and form.response_format != "verbose_json":
        raise APIError(
            400,
            "timestamp_granularities needs response_format 'verbose_json'",
            param="timestamp_granularities",
        )
    language = form.language if isinstance(form, TranscriptionForm) else None
    streamed = bool(form.stream) if isinstance(form, TranscriptionForm) else False
    engine = await pool.acquire(form.model, SPEECH)
    language_code = engine.check_language(language, task)
    assert engine.info is not None
    samples, mel = await asyncio.to_thread(
        _prepare, audio, engine.info.n_mels, settings.max_audio_seconds
    )
    request_id = f"transcr-{uuid.uuid4().hex}"
    logs.request_id.set(request_id)  # this id, not the middleware's, from here on
    transcription = TranscriptionRequest(
        request_id=request_id,
        mel=mel,
        content_frames=content_frames(samples),
        task=task,
        language=language_code,
        prompt=form.prompt,
        temperature=form.temperature,
        word_timestamps=words,
    )
    stream = engine.submit(transcription)
    headers = response_headers(request_id, fields, schema, IGNORED_FIELDS)
    logger.info(
        "%s %s model=%r seconds=%.1f format=%s stream=%s",
        request_id,
        task,
        form.model,
        samples.size / 16000,
        form.response_format,
        streamed,
    )
    if streamed:
        events = cancel_on_close(request, _stream_events(stream, request_id), [stream], request_id)
        return sse.event_stream(events, headers, settings)
    outcome = await collected_or_gone(request, _collect(stream), [stream], request_id)
    if isinstance(outcome, Response):
        return outcome
    segments, done, error = outcome
    if error is not None or done is None:
        return error_response(error or RuntimeError("transcription ended early"), headers)
    return _render(form.response_format, segments, done, task, headers, words)


def _prepare(audio: bytes, n_mels: int, max_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Decode and compute features (PyAV and numpy only: safe in a worker thread)."""
    try:
        samples = decode_audio(audio, max_seconds)
    except AudioDecodeError as exc:
        raise APIError(400, str(exc), param="file", code="invalid_audio") from None
    return samples, log_mel(samples, n_mels)


async def _read_form(request: Request, max_audio_bytes: int) -> tuple[dict[str, Any], bytes]:
    """(the text fields, array fields gathered under their name without `[]`; the file's bytes)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise APIError(
            400,
            "Expected a multipart/form-data body with a 'file' field (the audio) and 'model'",
            code="invalid_content_type",
        )
    raw = await read_body(request, max_audio_bytes + MULTIPART_OVERHEAD)

    async def replay() -> Message:
        return {"type": "http.request", "body": raw, "more_body": False}

    parsed = Request(request.scope, receive=replay)
    try:
        form = await parsed.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except HTTPException as exc:  # Starlette's multipart parser: no boundary, bad parts, limits
        raise APIError(
            400, f"Invalid multipart/form-data body: {exc.detail}", code="invalid_multipart"
        ) from None
    try:
        fields: dict[str, Any] = {}
        audio: bytes | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "file":
                    raise APIError(400, f"Unexpected file field '{key}'", param=key)
                audio = await value.read()
                continue
            if key.endswith("[]"):
                fields.setdefault(key[:-2], []).append(value)
            else:
                fields[key] = value
    finally:
        await form.close()
    if audio is None:
        raise APIError(400, "Missing the 'file' field (the audio to transcribe)", param="file")
    if len(audio) > max_audio_bytes:
        raise APIError(
            413,
            f"The audio file is larger than the limit of {max_audio_bytes} bytes",
            param="file",
            code="file_too_large",
        )
    return fields, audio


async def _collect(
    stream: EventSource,
) -> tuple[list[Segment], TranscriptionDone | None, Exception | None]:
    segments: list[Segment] = []
    async for event in stream:
        if isinstance(event, Segment):
            segments.append(event)
        elif isinstance(event, TranscriptionDone):
            return segments, event, None
        elif isinstance(event, ErrorEvent):
            return segments, None, event.error
    return segments, None, None


def _render(
    response_format: str,
    segments: list[Segment],
    done: TranscriptionDone,
    task: str,
    headers: dict[str, str],
    words: bool,
) -> Response:
    if response_format == "text":
        return PlainTextResponse(transcripts.transcript_text(segments) + "\n", headers=headers)
    if response_format == "srt":
        return PlainTextResponse(transcripts.srt(segments), headers=headers)
    if response_format == "vtt":
        return PlainTextResponse(transcripts.vtt(segments), headers=headers, media_type="text/vtt")
    if response_format == "verbose_json":
        # A translation's `language` is its output's (OpenAI: "always english"), not the one heard
        language = "english" if task == "translate" else done.language
        body = transcripts.verbose_json_body(segments, task, language, done.duration, words)
        return JSONResponse(body, headers=headers)
    return JSONResponse(transcripts.json_body(segments, done.duration), headers=headers)


async def _stream_events(stream: EventSource, request_id: str) -> AsyncIterator[bytes | sse.Last]:
    """`transcript.text.delta` per finished segment, then `transcript.text.done` (or the error
    event) as the stream's `Last` frame."""
    segments: list[Segment] = []
    async for event in stream:
        if isinstance(event, Segment):
            text = event.text if segments else event.text.lstrip()
            segments.append(event)
            yield sse.data({"type": "transcript.text.delta", "delta": text})
        elif isinstance(event, TranscriptionDone):
            # No usage here: the SDK's done event only knows token usage, which whisper's
            # duration-billed transcription does not have.
            body = {"type": "transcript.text.done", "text": transcripts.transcript_text(segments)}
            yield sse.Last(sse.data(body))
        elif isinstance(event, ErrorEvent):
            logger.error("%s failed in stream: %s", request_id, event.error)
            yield sse.Last(sse.data(from_engine_error(event.error).body()))
