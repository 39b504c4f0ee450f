"""Kokoro-82M (the store's, imported from its PyPI packages) on a piece of text that reads over
Kokoro's limit of 510 phonemes (numbers read long): the engine speaks all of it, in parts, so
its audio is as long as that of its halves spoken apart; it was cut at the limit, the rest lost.

How long the audio is, is set by Kokoro's text side (ALBERT, the prosody predictor's durations),
which runs for real here. The iSTFTNet decoder only turns those frames into samples, and takes
about 50 seconds a second of audio on a shared 2-core CPU, so a stand-in makes one sample a
frame. Opt-in: the text side alone takes minutes on such a CPU."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engines.tts.engine import KokoroEngine
from engines.tts.kokoro import MAX_PHONEMES
from engines.tts.phonemes import phonemize
from engines.types import AudioChunk, SynthesisDone, SynthesisRequest
from engines.weights.kokoro import NAME as KOKORO
from engines.weights.kokoro import ensure_kokoro
from engines.weights.store import ModelStore
from server.settings import Settings

pytestmark = pytest.mark.optin

HALVES = (
    "Call 1234567890, 2345678901, 3456789012,",
    "4567890123, 5678901234, 6789012345 or 7890123456.",
)
TEXT = " ".join(HALVES)  # one piece (no sentence end), about 690 phonemes


def one_sample_a_frame(asr: Any, f0: Any, noise: Any, style: Any) -> Any:
    """Kokoro's decoder's place: (1, frames) zeros, as long as the frames it is given."""
    import mlx.core as mx

    return mx.zeros((1, asr.shape[-1]))


class FramesOnlyKokoro(KokoroEngine):
    def load(self) -> None:
        super().load()
        self._model.model.decoder = one_sample_a_frame  # on the engine thread, before any step


async def speak(engine: KokoroEngine, text: str) -> tuple[list[AudioChunk], SynthesisDone]:
    assert engine.info is not None
    stream = engine.submit(SynthesisRequest("r", text, engine.info.default_voice, 1.0))
    events = [event async for event in stream]
    done = events[-1]
    assert isinstance(done, SynthesisDone), done
    return [event for event in events if isinstance(event, AudioChunk)], done


async def test_a_piece_over_the_phoneme_limit_is_spoken_whole() -> None:
    assert len(phonemize(TEXT)) > MAX_PHONEMES * 1.3
    assert all(len(phonemize(half)) <= MAX_PHONEMES for half in HALVES)
    engine = FramesOnlyKokoro(KOKORO, ensure_kokoro(ModelStore(Settings().home), progress=False))
    engine.start()
    try:
        await engine.wait_loaded()
        chunks, whole = await speak(engine, TEXT)
        apart = [(await speak(engine, half))[1] for half in HALVES]
    finally:
        await asyncio.to_thread(engine.stop)
    assert all(0 < chunk.tokens <= MAX_PHONEMES for chunk in chunks)
    assert " ".join(chunk.text for chunk in chunks) == TEXT
    assert whole.tokens > MAX_PHONEMES * 1.3
    # Within 10%: the engine cuts at the last clause mark within the limit, not between the
    # halves, and a number read last in its part is read slower. Cut at 510 phonemes, the whole
    # was about three quarters of its halves' length.
    together = sum(done.samples for done in apart)
    assert abs(whole.samples - together) <= 0.1 * together, (whole.samples, together)
