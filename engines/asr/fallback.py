"""Whisper's quality guards (OpenAI's transcribe defaults): when a decoded window is decoded
again at a hotter temperature, when it is silence, and which attempt wins.

Invariant: pure functions of a window's results; the engine decides nothing about quality itself.
"""

from __future__ import annotations

from engines.asr.decode import WindowResult

COMPRESSION_RATIO_THRESHOLD = 2.4  # above: repetitive output, decode again hotter
LOGPROB_THRESHOLD = -1.0  # below: unsure output, decode again hotter
NO_SPEECH_THRESHOLD = 0.6  # above (and unsure): the window is silence, emit nothing
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PROMPT_RESET_TEMPERATURE = 0.5  # a window decoded hotter than this is not used as context


def temperatures(requested: float) -> tuple[float, ...]:
    """The temperatures a window may be decoded at, in order: the fallback schedule for a
    request at 0, else only the temperature asked for."""
    return FALLBACK_TEMPERATURES if requested == 0 else (requested,)


def is_silence(result: WindowResult) -> bool:
    """Whisper is sure there is no speech and unsure of the words: emit nothing."""
    return result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD


def best_attempt(attempts: list[WindowResult]) -> WindowResult:
    """The last attempt if it passed; when every temperature failed, the likeliest attempt that
    is not repetitive (or the likeliest of all) rather than whatever the hottest one produced."""
    last = attempts[-1]
    if len(attempts) == 1 or not needs_fallback(last):
        return last
    fluent = [r for r in attempts if r.compression_ratio <= COMPRESSION_RATIO_THRESHOLD]
    return max(fluent or attempts, key=lambda r: r.avg_logprob)


def needs_fallback(result: WindowResult) -> bool:
    if is_silence(result):
        return False  # hotter decoding would only invent words
    return (
        result.compression_ratio > COMPRESSION_RATIO_THRESHOLD
        or result.avg_logprob < LOGPROB_THRESHOLD
    )
