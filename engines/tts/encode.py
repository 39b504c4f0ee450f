"""Encoding synthesised audio for the wire, piece by piece, with PyAV (no MLX here).

`AudioEncoder.encode` takes the next float32 mono samples and returns the bytes of the output
file that are ready so far; `finish` flushes the rest. Concatenated, they are one valid file of
the asked format, so a client may play (or save) the bytes as they arrive.

Formats (OpenAI's): mp3 (MP3), opus (Ogg Opus, resampled to 48 kHz), aac (ADTS AAC), flac,
wav (16-bit PCM whose header gives an unknown length, as streamed WAV files do) and pcm (raw
16-bit little-endian samples at the model's rate, no header).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

# response_format → (container, codec, media type)
FORMATS: dict[str, tuple[str, str, str]] = {
    "mp3": ("mp3", "libmp3lame", "audio/mpeg"),
    "opus": ("ogg", "libopus", "audio/ogg"),
    "aac": ("adts", "aac", "audio/aac"),
    "flac": ("flac", "flac", "audio/flac"),
    "wav": ("wav", "pcm_s16le", "audio/wav"),
    "pcm": ("s16le", "pcm_s16le", "audio/pcm"),
}
OPUS_RATE = 48000  # the only rates Opus takes are 8/12/16/24/48 kHz; Ogg Opus players expect 48
UNKNOWN_LENGTH = 0xFFFFFFFF


def media_type(response_format: str) -> str:
    return FORMATS[response_format][2]


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM (clipped)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_header(sample_rate: int) -> bytes:
    """A mono 16-bit WAV header whose RIFF and data lengths say 'unknown' (streamed)."""
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", UNKNOWN_LENGTH) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", UNKNOWN_LENGTH)
    )  # fmt: skip


class _Sink:
    """A write-only file for PyAV's muxer: what it writes is taken out by `take`."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


class AudioEncoder:
    """One output file, written incrementally. Not thread-safe: one caller at a time."""

    def __init__(self, response_format: str, sample_rate: int) -> None:
        self.response_format = response_format
        self.sample_rate = sample_rate
        self._header_sent = False
        self._container: Any = None
        if response_format not in ("wav", "pcm"):
            self._open_container()

    def _open_container(self) -> None:
        import av

        container_format, codec, _ = FORMATS[self.response_format]
        rate = OPUS_RATE if codec == "libopus" else self.sample_rate
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=container_format)
        self._stream = self._container.add_stream(codec, rate=rate, layout="mono")
        self._resampler = av.AudioResampler(
            format=self._stream.codec_context.format.name, layout="mono", rate=rate
        )
        self._pts = 0

    def encode(self, samples: np.ndarray) -> bytes:
        """The bytes of the output made ready by these samples (may be empty)."""
        if self.response_format == "pcm":
            return pcm16(samples)
        if self.response_format == "wav":
            header = b"" if self._header_sent else wav_header(self.sample_rate)
            self._header_sent = True
            return header + pcm16(samples)
        if samples.size == 0:
            return b""  # (an empty frame would flush the encoder)
        return self._mux(self._frame(samples))

    def finish(self) -> bytes:
        """The rest of the output (the encoder's delay, a container's trailer)."""
        if self._container is None:
            return b"" if self._header_sent else self.encode(np.zeros(0, np.float32))
        data = self._mux(None)
        self._container.close()
        return data + self._sink.take()

    def _frame(self, samples: np.ndarray) -> Any:
        import av

        frame = av.AudioFrame.from_ndarray(
            np.asarray(samples, np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        return frame

    def _mux(self, frame: Any) -> bytes:
        """Resample `frame` (None: flush the resampler and the encoder) and mux the packets."""
        for resampled in self._resampler.resample(frame):
            resampled.pts = self._pts
            self._pts += resampled.samples
            self._container.mux(self._stream.encode(resampled))
        if frame is None:
            self._container.mux(self._stream.encode(None))
        return self._sink.take()
