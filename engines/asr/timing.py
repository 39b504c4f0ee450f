"""Tightening segment times onto the speech they cover.

Whisper's segment timestamps drift into surrounding silence (its first timestamp in a window is
at most 1 s in, so speech that starts later in the window gets an early start; a segment's end
may run on through a pause). Each segment's start and end are moved inward to the first and last
frames whose loudness stands out from the recording's noise floor, padded a little. This only
refines times: it never removes a segment or its text (silence is the no-speech guard's job).

Invariants: a tightened segment lies within the original one; if it covers no frame louder than
the floor (or the recording has no contrast at all, e.g. constant noise), it is left as it was.
"""

from __future__ import annotations

import numpy as np

from engines.asr.audio import FRAMES_PER_SECOND

PAD_SECONDS = 0.2  # kept around the loud frames: onsets and releases are quieter than vowels
MIN_CONTRAST = 0.1  # in scaled log-mel units (0.25 = 10 dB): below, no trimming
THRESHOLD_SHARE = 0.3  # loud = above floor + this share of (peak − floor)


def loud_frames(mel: np.ndarray, content_frames: int) -> np.ndarray:
    """One bool per frame of the recording: its loudest mel band stands out from the floor
    (the band maximum, not the mean, so narrow-band sounds such as tones and vowels count)."""
    energy = mel[:content_frames].max(axis=1)
    if energy.size == 0:
        return np.zeros(0, bool)
    floor, peak = np.percentile(energy, [10, 99])
    if peak - floor < MIN_CONTRAST:
        return np.ones(energy.size, bool)
    return np.asarray(energy > floor + THRESHOLD_SHARE * (peak - floor))


def tighten(start: float, end: float, loud: np.ndarray) -> tuple[float, float]:
    first, last = int(start * FRAMES_PER_SECOND), int(np.ceil(end * FRAMES_PER_SECOND))
    hits = np.flatnonzero(loud[first:last])
    if hits.size == 0:
        return start, end
    new_start = max(start, (first + hits[0]) / FRAMES_PER_SECOND - PAD_SECONDS)
    new_end = min(end, (first + hits[-1] + 1) / FRAMES_PER_SECOND + PAD_SECONDS)
    return new_start, max(new_end, new_start)
