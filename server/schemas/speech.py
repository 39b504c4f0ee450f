"""`POST /v1/audio/speech` (spec `CreateSpeechRequest` in ../shared/openai/openapi.yaml).

`voice` is a voice name of the model (`GET /v1/audio/voices`) or `{"id": name}`; the model
checks it. `instructions` is accepted and reported as ignored (Kokoro takes no instructions).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from engines.tts.text import MAX_INPUT_CHARS
from server.schemas.common import Strict

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

# Accepted and documented as having no effect here.
IGNORED_FIELDS = ("instructions",)


class VoiceId(Strict):
    id: str = Field(min_length=1, max_length=128)


class SpeechBody(Strict):
    model: str
    input: str = Field(max_length=MAX_INPUT_CHARS)
    voice: str | VoiceId = Field(description="a voice of the model (GET /v1/audio/voices)")
    instructions: str | None = Field(None, max_length=MAX_INPUT_CHARS)
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, allow_inf_nan=False)
    stream_format: Literal["audio", "sse"] = "audio"

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        # Invisible characters (controls, NUL, zero-width spaces, a BOM) give Kokoro no
        # phonemes: such an input made no samples and, as mp3/opus/aac, a 0-byte "file".
        if not any(char.isprintable() and not char.isspace() for char in value):
            raise ValueError("input must not be empty (it has no visible character)")
        return value

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice
