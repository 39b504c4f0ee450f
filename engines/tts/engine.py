"""KokoroEngine: text to speech on its own engine thread.

Each request's input is split at sentence ends (text.py) when it is submitted; every step the
engine speaks one reading of the request at the head of the queue — a piece, or a part of one
that reads over Kokoro's phoneme limit (kokoro.py `readings`: all parts are spoken) — pushes
its audio, and moves that request to the back, so concurrent requests take turns a sentence at
a time (the second request's first audio waits for one sentence, not for the whole first
request).

Invariants:
- All MLX work happens on the engine thread; requests and audio cross as plain values.
- A request stays in the queue while its reading is being made, so a step that raises fails
  it (fail_all) instead of leaving its stream open; every accepted request ends with
  SynthesisDone or an ErrorEvent.
- A cancelled request leaves before the next step: its remaining readings are never made.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.bridge import RequestStream
from engines.errors import InvalidRequest
from engines.tts.text import split_pieces
from engines.types import (
    AudioChunk,
    EngineStats,
    ErrorEvent,
    SynthesisDone,
    SynthesisRequest,
    TTSLimits,
    TTSModelInfo,
)
from engines.worker import EngineThread

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    request: SynthesisRequest
    stream: RequestStream
    pieces: deque[str]
    readings: deque[tuple[str, str]] = field(default_factory=deque)  # of the piece begun
    samples: int = 0
    tokens: int = 0


class KokoroEngine(EngineThread):
    kind = "tts"

    def __init__(self, name: str, path: Path, limits: TTSLimits | None = None) -> None:
        super().__init__(name)
        self.path = path
        self.limits = limits or TTSLimits()
        self.info: TTSModelInfo | None = None
        self.pieces_made = 0
        self.tokens_read = 0
        self._jobs: deque[_Job] = deque()
        self._model: Any = None

    # -- any thread ---------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return self.accepted

    def stats(self) -> EngineStats:
        return EngineStats(
            active=self.accepted,
            queued=max(0, self.accepted - 1),
            largest_batch=1 if self.pieces_made else 0,
            tokens_generated=self.tokens_read,
            stalled=self.stalled(self.accepted > 0, self.limits.watchdog_s),
            failures=self.failures,
            weights_bytes=self.weights_bytes,
        )

    def check_voice(self, voice: str) -> str:
        """`voice` if the model has it; InvalidRequest naming the voices otherwise."""
        assert self.info is not None
        if voice not in self.info.voices:
            raise InvalidRequest(
                f"unknown voice {voice!r} for model '{self.name}'; its voices: "
                f"{', '.join(self.info.voices)}",
                param="voice",
            )
        return voice

    def submit(self, request: SynthesisRequest) -> RequestStream:
        """Queue a synthesis; AudioChunks (one per reading: a piece, or a part of a long one)
        then SynthesisDone arrive on the stream."""
        self.accept_request(self.limits.max_waiting, "syntheses", retry_after_s=2)
        stream = RequestStream(request.request_id)
        self.post(_Job(request, stream, deque(split_pieces(request.text))))
        return stream

    # -- engine thread -----------------------------------------------------------------------

    def load(self) -> None:
        from engines.tts.kokoro import Kokoro

        self._model = Kokoro(self.path)
        self.weights_bytes = self._model.weights_bytes
        self.info = TTSModelInfo(
            name=self.name,
            path=str(self.path),
            created=int(time.time()),
            sample_rate=self._model.sample_rate,
            voices=tuple(sorted(self._model.voices)),
            default_voice=self._model.default_voice,
        )

    def unload(self) -> None:
        import mlx.core as mx

        self._model = None
        mx.clear_cache()

    def handle(self, message: Any) -> None:
        self._jobs.append(message)

    def has_work(self) -> bool:
        return bool(self._jobs)

    def fail_all(self, error: Exception) -> None:
        while self._jobs:
            self._finish(self._jobs.popleft(), ErrorEvent(error))

    def step(self) -> None:
        """Speak the next reading of the request at the head of the queue."""
        for job in [job for job in self._jobs if job.stream.cancelled]:
            self._jobs.remove(job)
            self.finish_request()
        if not self._jobs:
            return
        job = self._jobs[0]
        if job.pieces and not job.readings:
            job.readings.extend(self._model.readings(job.pieces[0]))
            job.pieces.popleft()
        if job.readings:
            text, phonemes = job.readings[0]
            request = job.request
            samples, tokens = self._model.synthesise(phonemes, request.voice, request.speed)
            job.readings.popleft()
            job.samples += samples.size
            job.tokens += tokens
            self.pieces_made += 1
            self.tokens_read += tokens
            job.stream.push(AudioChunk(samples, text, tokens))
        self._jobs.rotate(-1)  # the head goes to the back: requests take turns
        if not job.pieces and not job.readings:
            self._jobs.remove(job)
            self._finish(job, SynthesisDone(job.samples, job.tokens))
        if not self._jobs:
            import mlx.core as mx

            mx.clear_cache()  # idle: give the pieces' buffers back

    def _finish(self, job: _Job, event: SynthesisDone | ErrorEvent) -> None:
        self.finish_request()  # first: a reader woken by the last event sees the engine idle
        job.stream.push(event)
