"""Form fields of `/v1/audio/transcriptions` and `/v1/audio/translations`.

Spec: `CreateTranscriptionRequest` / `CreateTranslationRequest`. Multipart fields arrive as
strings, so these models parse leniently ("0.2" is a number, "true" a boolean); array fields
arrive as repeated `name[]` parts and are gathered under `name` before validation; unknown fields
are kept so they can be reported in `x-mlxd-ignored-fields`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_PROMPT_CHARS = 4096

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
Granularity = Literal["word", "segment"]


def _segments_only() -> list[Granularity]:
    return ["segment"]


class TranslationForm(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)


class TranscriptionForm(TranslationForm):
    language: str | None = Field(None, max_length=32)
    timestamp_granularities: list[Granularity] = Field(default_factory=_segments_only)
    stream: bool | None = False


# Accepted and documented as having no effect here (features of OpenAI's own models).
IGNORED_FIELDS = ("include", "chunking_strategy", "languages", "keywords")


class TranslationUpload(TranslationForm):
    """The multipart form as documented in /openapi.json: the fields plus the audio `file`."""

    file: bytes = Field(json_schema_extra={"format": "binary"})


class TranscriptionUpload(TranscriptionForm):
    file: bytes = Field(json_schema_extra={"format": "binary"})
