"""Audio decoding (PyAV), whisper's front end, segmentation and subtitle formats: pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from engines.asr.audio import (
    HOP_LENGTH,
    N_FFT,
    N_FRAMES,
    AudioDecodeError,
    content_frames,
    decode_audio,
    log_mel,
    mel_filters,
)
from engines.asr.decode import split_segments
from engines.asr.timing import loud_frames, tighten
from engines.types import Segment
from server import transcripts
from tests.speech import encode, silence

TSB = 50363  # tiny.en's <|0.00|>


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("container", "codec", "rate"),
    [
        ("wav", "pcm_s16le", 16000),
        ("wav", "pcm_s16le", 44100),
        ("flac", "flac", 16000),
        ("mp3", "libmp3lame", 16000),
        ("ogg", "libopus", 48000),
        ("webm", "libopus", 48000),
        ("mp4", "aac", 16000),
    ],
)
def test_containers_decode_to_16k_mono(container: str, codec: str, rate: int) -> None:
    samples = decode_audio(encode(tone(2.0), container, codec, rate), max_seconds=60)
    assert samples.dtype == np.float32
    assert abs(samples.size - 32000) < 2048  # codecs pad by a frame or so
    spectrum = np.abs(np.fft.rfft(samples[4000:20000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) < 2  # the tone survived


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"definitely not audio" * 50, "could not be decoded"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", "could not be decoded|no samples"),
    ],
)
def test_unusable_input_is_an_audio_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(AudioDecodeError, match=message) as raised:
        decode_audio(data, max_seconds=60)
    assert "Errno" not in str(raised.value) and "<none>" not in str(raised.value)  # FFmpeg's words


def test_duration_limit() -> None:
    with pytest.raises(AudioDecodeError, match="longer than the limit of 1 seconds"):
        decode_audio(encode(silence(3), "wav", "pcm_s16le"), max_seconds=1)


def test_log_mel_shape_and_range() -> None:
    samples = tone(5.0)
    mel = log_mel(samples, 80)
    assert content_frames(samples) == 500
    assert mel.shape == (500 + N_FRAMES, 80)
    # whisper's clamp: nothing lies more than 8 (log10 units, i.e. 2 scaled) below the peak
    assert mel.max() - mel.min() <= 2.0 + 1e-6


@pytest.mark.parametrize("seconds", [0.3, 5.0, 31.0])
def test_log_mel_equals_the_transform_of_the_padded_signal(seconds: float) -> None:
    """The silence after the recording is filled in, not transformed: same values."""
    samples = tone(seconds)
    padded = np.concatenate([samples, np.zeros(N_FRAMES * HOP_LENGTH, np.float32)])
    spectrum = np.fft.rfft(
        np.lib.stride_tricks.sliding_window_view(np.pad(padded, N_FFT // 2, mode="reflect"), N_FFT)[
            ::HOP_LENGTH
        ]
        * np.hanning(N_FFT + 1)[:-1].astype(np.float32),
        axis=-1,
    )[:-1]
    mel = (np.abs(spectrum) ** 2).astype(np.float32) @ mel_filters(80).T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    expected = (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0
    assert np.allclose(log_mel(samples, 80), expected, atol=1e-4)


def test_mel_filters_are_slaney_triangles() -> None:
    filters = mel_filters(80)
    assert filters.shape == (80, 201)
    assert (filters >= 0).all()
    peaks = filters.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()  # centres rise with the band index


def test_segments_from_timestamp_pairs() -> None:
    tokens = [TSB, 1, 2, TSB + 100, TSB + 100, 3, TSB + 250]  # ends on a lone timestamp
    segments, advance = split_segments(tokens, TSB, window_start=30.0, window_frames=3000)
    assert [(s.start, s.end) for s in segments] == [(30.0, 32.0), (32.0, 35.0)]
    assert advance == 3000  # everything decoded: next window


def test_segments_cut_mid_speech_resume_at_the_last_pair() -> None:
    tokens = [TSB, 1, TSB + 100, TSB + 100, 2, 3]  # the second segment never closed
    segments, advance = split_segments(tokens, TSB, window_start=0.0, window_frames=3000)
    assert [(s.start, s.end) for s in segments] == [(0.0, 2.0)]
    assert advance == 200  # resume where the last complete segment ended (frames)


def test_segment_without_pairs_spans_the_window() -> None:
    segments, advance = split_segments([TSB, 1, 2], TSB, window_start=0.0, window_frames=1234)
    assert [(s.start, s.end) for s in segments] == [(0.0, 12.34)]
    assert advance == 1234


def test_tighten_moves_times_onto_loud_frames() -> None:
    samples = np.concatenate([silence(3), tone(2), silence(3)])
    loud = loud_frames(log_mel(samples, 80), content_frames(samples))
    start, end = tighten(0.0, 8.0, loud)
    assert 2.7 <= start <= 3.0 and 5.0 <= end <= 5.3
    assert tighten(6.0, 7.5, loud) == (6.0, 7.5)  # nothing loud inside: unchanged


def test_tighten_leaves_constant_noise_alone() -> None:
    noise = (0.1 * np.random.default_rng(0).standard_normal(16000 * 4)).astype(np.float32)
    loud = loud_frames(log_mel(noise, 80), content_frames(noise))
    assert tighten(0.5, 3.5, loud) == (0.5, 3.5)


def segment(number: int, start: float, end: float, text: str) -> Segment:
    return Segment(number, 0, start, end, text, [], 0.0, -0.1, 1.0, 0.0)


def test_subtitle_timestamps() -> None:
    segments = [segment(0, 0.0, 1.5, " One."), segment(1, 3599.9995, 3723.456, " Two.")]
    assert transcripts.srt(segments) == (
        "1\n00:00:00,000 --> 00:00:01,500\nOne.\n\n2\n01:00:00,000 --> 01:02:03,456\nTwo.\n"
    )
    assert transcripts.vtt(segments).splitlines()[2] == "00:00:00.000 --> 00:00:01.500"
    assert transcripts.transcript_text(segments) == "One. Two."
    assert transcripts.srt([]) == "" and transcripts.vtt([]) == "WEBVTT\n\n"
