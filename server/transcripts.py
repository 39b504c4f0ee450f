"""Transcription response bodies: json, text, srt, vtt, verbose_json (OpenAI's shapes).

Invariant: pure functions of the finished segments; the transcript text is the segments' texts
joined as whisper emits them (each begins with its own space), stripped at the ends.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from engines.types import Segment


def transcript_text(segments: list[Segment]) -> str:
    return "".join(segment.text for segment in segments).strip()


def _timestamp(seconds: float, decimal: str) -> str:
    milliseconds = max(0, round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{milliseconds:03d}"


def srt(segments: list[Segment]) -> str:
    blocks = [
        f"{number}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for number, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def vtt(segments: list[Segment]) -> str:
    blocks = [
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n"
        for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": round(duration, 3)}


def json_body(segments: list[Segment], duration: float) -> dict[str, Any]:
    return {"text": transcript_text(segments), "usage": usage(duration)}


def verbose_json_body(
    segments: list[Segment], task: str, language: str, duration: float, words: bool = False
) -> dict[str, Any]:
    """OpenAI's verbose transcription; with `words`, the top-level `words` list too."""
    body: dict[str, Any] = {
        "task": task,
        "language": language,
        "duration": round(duration, 3),
        "text": transcript_text(segments),
        "segments": [
            {key: value for key, value in asdict(segment).items() if key != "words"}
            for segment in segments
        ],
        "usage": usage(duration),
    }
    if words:
        body["words"] = [
            {"word": word.strip(), "start": start, "end": end}
            for segment in segments
            for word, start, end in segment.words
        ]
    return body
