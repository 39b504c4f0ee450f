"""A scripted text-to-speech engine: the HTTP contract of the "tts" kind without MLX.

Like the real engine it splits the input at sentence ends (engines/tts/text.py), makes one
AudioChunk per piece from its own thread (a sine tone, `samples_per_char` samples per
character; none for a piece without letters or digits, as Kokoro reads no sound in most
punctuation; after `piece_delay_s`), checks cancellation before each piece and counts the
pieces it made, so tests can see that a cancelled request stopped the work.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from engines.bridge import RequestStream
from engines.errors import EngineFailed, InvalidRequest
from engines.tts.text import split_pieces
from engines.types import (
    AudioChunk,
    ErrorEvent,
    SynthesisDone,
    SynthesisRequest,
    TTSModelInfo,
)
from tests.fakes import FakeLifecycle

SAMPLE_RATE = 24000


class FakeTTSEngine(FakeLifecycle):
    kind = "tts"

    def __init__(
        self,
        name: str = "fake-kokoro",
        voices: tuple[str, ...] = ("jf_alpha", "jm_kumo"),
        piece_delay_s: float = 0.0,
        samples_per_char: int = 240,
        fail_at_piece: int | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.voices = voices
        self.piece_delay_s = piece_delay_s
        self.samples_per_char = samples_per_char
        self.fail_at_piece = fail_at_piece
        self.info: TTSModelInfo | None = None
        self.requests: list[SynthesisRequest] = []
        self.pieces_made = 0

    def loaded_info(self) -> TTSModelInfo:
        return TTSModelInfo(
            self.name, "/fake", 1700000000, SAMPLE_RATE, self.voices, self.voices[0]
        )

    def check_voice(self, voice: str) -> str:
        if voice not in self.voices:
            raise InvalidRequest(
                f"unknown voice {voice!r}; one of: {', '.join(self.voices)}", param="voice"
            )
        return voice

    def submit(self, request: SynthesisRequest) -> RequestStream:
        stream = RequestStream(request.request_id)
        self.requests.append(request)
        with self._lock:
            self._active += 1
        threading.Thread(target=self._speak, args=(request, stream), daemon=True).start()
        return stream

    def _speak(self, request: SynthesisRequest, stream: RequestStream) -> None:
        final: SynthesisDone | ErrorEvent | None = None
        samples = tokens = 0
        for number, piece in enumerate(split_pieces(request.text)):
            time.sleep(self.piece_delay_s)
            if stream.cancelled:
                break
            if number == self.fail_at_piece:
                final = ErrorEvent(EngineFailed("scripted failure"))
                break
            # Like Kokoro, no sound for a piece without letters or digits ("()", "|", "...").
            spoken = any(char.isalnum() for char in piece)
            audio = tone(spoken * len(piece) * self.samples_per_char / request.speed)
            self.pieces_made += 1
            samples += audio.size
            tokens += len(piece)
            stream.push(AudioChunk(audio, piece, len(piece)))
        with self._lock:
            self._active -= 1
        stream.push(final or SynthesisDone(samples, tokens))


def tone(count: float, frequency: float = 440.0) -> np.ndarray:
    """`count` samples of a quiet sine tone at SAMPLE_RATE."""
    t = np.arange(int(count)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
