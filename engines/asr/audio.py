"""Audio in: any container PyAV (FFmpeg) can read → 16 kHz mono float32 → whisper's log-mel.

Plain numpy and PyAV only (no MLX), so this runs in a worker thread off the event loop and
off the engine thread; the engine receives finished features.
Invariants:
- `decode_audio` raises AudioDecodeError (never anything else) for input it cannot use: not
  audio, no audio stream, corrupt data, empty, or longer than the limit.
- `log_mel` matches whisper's front end: periodic Hann window of 400, hop 160, |STFT|² of a
  reflect-padded signal with the last frame dropped, Slaney mel filters, log10 clamped to
  (max − 8), scaled by (x + 4) / 4; the maximum is taken over the whole recording.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP_LENGTH  # mel frames in one 30 s window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH


class AudioDecodeError(ValueError):
    """The upload is not audio mlxd can use; the message says why, for a 400."""


def decode_audio(data: bytes, max_seconds: float) -> np.ndarray:
    """Decode `data` (any container/codec FFmpeg knows) to 16 kHz mono float32 samples."""
    import av

    if not data:
        raise AudioDecodeError("The audio file is empty.")
    max_samples = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("The file has no audio stream.")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += chunk.size
                if total > max_samples:
                    raise AudioDecodeError(
                        f"The audio is longer than the limit of {max_seconds:g} seconds."
                    )
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioDecodeError:
        raise
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError, IndexError) as exc:
        # FFmpeg's reason without PyAV's wrapping ("[Errno 1094995529] …: '<none>'").
        reason = getattr(exc, "strerror", None) or exc
        raise AudioDecodeError(f"The audio file could not be decoded: {reason}") from exc
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise AudioDecodeError("The audio file contains no samples.")
    if samples.size > max_samples:
        raise AudioDecodeError(f"The audio is longer than the limit of {max_seconds:g} seconds.")
    if not np.isfinite(samples).all():
        raise AudioDecodeError("The audio file contains invalid samples.")
    return samples


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mels = hz / f_sp
    log_region = hz >= min_log_hz
    mels[log_region] = min_log_hz / f_sp + np.log(hz[log_region] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    hz = mels * f_sp
    log_region = mels >= min_log_mel
    hz[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return hz


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular mel filters (n_mels, N_FFT // 2 + 1), as librosa builds them
    for sr=16000, n_fft=400 (what whisper was trained with)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_points = np.linspace(
        _hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([SAMPLE_RATE / 2]))[0], n_mels + 2
    )
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2 : n_mels + 2] - hz_points[:n_mels]))[:, None]
    return weights.astype(np.float32)


def log_mel(samples: np.ndarray, n_mels: int) -> np.ndarray:
    """Whisper's log-mel spectrogram (frames, n_mels) of `samples` followed by 30 s of silence
    (so every window, the last included, can be cut as a full 30 s slice).

    Only the recording (and one FFT length of the silence after it, which its last frames
    reach into) goes through the STFT; the rest of the silence is filled with the value the
    STFT gives silence after whisper's clamp. Equal to transforming the padded signal whole,
    at a fraction of the cost for short recordings."""
    audio = np.concatenate([samples, np.zeros(N_FFT, np.float32)])
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    n_frames = 1 + (padded.size - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, N_FFT),
        strides=(padded.strides[0] * HOP_LENGTH, padded.strides[0]),
        writeable=False,
    )
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    spectrum = np.fft.rfft(frames * window, axis=-1)[:-1]
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = power @ mel_filters(n_mels).T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    floor = max(float(log_spec.max()) - 8.0, -10.0)  # silence: log10(1e-10), clamped
    np.maximum(log_spec, floor, out=log_spec)
    total = (samples.size + N_SAMPLES) // HOP_LENGTH
    out = np.full((total, n_mels), (floor + 4.0) / 4.0, np.float32)
    out[: min(total, len(log_spec))] = (log_spec[:total] + 4.0) / 4.0
    return out


def content_frames(samples: np.ndarray) -> int:
    """Mel frames that hold the recording itself (the rest is the appended silence)."""
    return samples.size // HOP_LENGTH
