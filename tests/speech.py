"""Test audio: Debian's pocketsphinx LibriVox clips with their reference transcripts, encoders
(PyAV) for other containers, and word error rate after a light normalisation."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.asr.audio import SAMPLE_RATE, decode_audio

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


@dataclass(frozen=True)
class Clip:
    name: str
    samples: np.ndarray
    reference: str

    @property
    def seconds(self) -> float:
        return self.samples.size / SAMPLE_RATE


def librivox_clips() -> list[Clip]:
    """The five clips (3–7 s each) in file order, with their reference transcripts."""
    if not LIBRIVOX.is_dir():
        raise RuntimeError(f"{LIBRIVOX} is missing: apt-get install pocketsphinx-testdata")
    references = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        match = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
        if match:
            references[match.group(2)] = match.group(1)
    return [
        Clip(name, decode_audio((LIBRIVOX / f"{name}.wav").read_bytes(), 60), text)
        for name, text in sorted(references.items())
    ]


_NUMBERS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "10": "ten"}


def normalise(text: str) -> list[str]:
    text = text.lower().replace("mr.", "mister").replace("mrs.", "missus").replace("-", " ")
    words = re.sub(r"[^a-z0-9' ]+", " ", text).split()
    return [_NUMBERS.get(word, word) for word in words]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length), after normalising both."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i]
        for j, hyp_word in enumerate(hyp, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
            )
        previous = current
    return previous[-1], len(ref)


def encode(samples: np.ndarray, container: str, codec: str, rate: int = SAMPLE_RATE) -> bytes:
    """`samples` (16 kHz mono float32) encoded with PyAV, e.g. ("mp3", "libmp3lame"),
    ("ogg", "libopus"), ("wav", "pcm_s16le"), ("flac", "flac")."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout="mono")
        frame_format = "s16" if codec in ("pcm_s16le", "flac") else "fltp"
        if codec == "libmp3lame":
            frame_format = "fltp"
        resampler = av.AudioResampler(format=frame_format, layout="mono", rate=rate)
        pcm = av.AudioFrame.from_ndarray(
            samples[None, :].astype(np.float32), format="flt", layout="mono"
        )
        pcm.sample_rate = SAMPLE_RATE
        for frame in [*resampler.resample(pcm), *resampler.resample(None)]:
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)
