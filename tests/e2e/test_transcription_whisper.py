"""Speech to text end to end: the embedded whisper tiny.en behind the real server, through the
strict OpenAI SDK, on real human speech (Debian's pocketsphinx LibriVox clips)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import LiveServer
from tests.speech import Clip, encode, librivox_clips, silence, word_errors

MODEL = "whisper-tiny.en"
WER_BOUND = 0.10


@pytest.fixture(scope="module")
def clips() -> list[Clip]:
    return librivox_clips()


def wav(samples: np.ndarray) -> bytes:
    return encode(samples, "wav", "pcm_s16le")


def test_word_error_rate_on_librivox(live: LiveServer, clips: list[Clip]) -> None:
    client = live.client()
    errors = words = 0
    for clip in clips:
        result = client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav(clip.samples)))
        clip_errors, clip_words = word_errors(clip.reference, result.text)
        errors, words = errors + clip_errors, words + clip_words
    assert errors / words <= WER_BOUND, f"WER {errors / words:.3f}"


def test_every_response_format(live: LiveServer, clips: list[Clip]) -> None:
    client = live.client()
    audio = ("a.wav", wav(clips[0].samples))
    plain = client.audio.transcriptions.create(model=MODEL, file=audio)
    assert plain.usage is not None and plain.usage.seconds == pytest.approx(clips[0].seconds)
    verbose = client.audio.transcriptions.create(
        model=MODEL, file=audio, response_format="verbose_json"
    )
    assert verbose.text == plain.text
    assert verbose.language == "english"
    assert verbose.duration == pytest.approx(clips[0].seconds)
    assert verbose.segments and verbose.segments[0].start < 1.0
    assert verbose.segments[-1].end <= clips[0].seconds + 1e-6
    text = client.audio.transcriptions.create(model=MODEL, file=audio, response_format="text")
    assert text.strip() == plain.text
    srt = client.audio.transcriptions.create(model=MODEL, file=audio, response_format="srt")
    assert srt.startswith("1\n00:00:00,") and " --> 00:00:0" in srt
    vtt = client.audio.transcriptions.create(model=MODEL, file=audio, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.") and plain.text.split()[-1] in vtt


def test_streamed_deltas_add_up_to_the_text(live: LiveServer, clips: list[Clip]) -> None:
    client = live.client()
    samples = np.concatenate([clips[0].samples, silence(1), clips[1].samples])
    events = list(
        client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav(samples)), stream=True)
    )
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert events[-1].type == "transcript.text.done"
    assert deltas == events[-1].text and "Dashwood" in deltas


def test_two_minutes_have_monotonic_timestamps_where_the_speech_is(
    live: LiveServer, clips: list[Clip]
) -> None:
    """Five clips, each after a stretch of silence, over 120 s: windows end mid-speech and in
    silence; segments come in order and every start and end lies on speech (±0.5 s), never
    in the silences between."""
    gaps = [3.0, 17.0, 24.0, 11.0, 29.0]
    pieces, spans, cursor = [], [], 0.0
    for gap, clip in zip(gaps, clips, strict=True):
        pieces += [silence(gap), clip.samples]
        spans.append((cursor + gap, cursor + gap + clip.seconds))
        cursor += gap + clip.seconds
    pieces.append(silence(120 - cursor))
    samples = np.concatenate(pieces)
    client = live.client()
    result = client.audio.transcriptions.create(
        model=MODEL, file=("long.wav", wav(samples)), response_format="verbose_json"
    )
    assert result.duration == pytest.approx(120, abs=0.01)
    segments = result.segments or []
    assert segments
    previous_end = 0.0
    for segment in segments:
        assert segment.start >= previous_end - 1e-6 and segment.end > segment.start
        previous_end = segment.end
        for moment in (segment.start, segment.end):
            assert any(start - 0.5 <= moment <= end + 0.5 for start, end in spans), (
                f"segment {segment.start}-{segment.end} {segment.text!r}: {moment} is in a "
                f"silence (speech at {spans})"
            )
    for start, end in spans:  # every clip's speech was found
        assert any(s.start < end and s.end > start for s in segments), (start, end, segments)


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_no_invented_sentences(live: LiveServer, kind: str) -> None:
    rng = np.random.default_rng(7)
    if kind == "silence":
        samples = silence(20)
    else:
        samples = (0.05 * rng.standard_normal(20 * 16000)).astype(np.float32)
    result = live.client().audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav(samples)), response_format="verbose_json"
    )
    assert len(result.text.split()) <= 2, result.text


@pytest.mark.parametrize(
    ("container", "codec", "rate"), [("mp3", "libmp3lame", 16000), ("ogg", "libopus", 48000)]
)
def test_compressed_audio_transcribes_like_wav(
    live: LiveServer, clips: list[Clip], container: str, codec: str, rate: int
) -> None:
    client = live.client()
    reference = client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav(clips[3].samples))
    ).text
    encoded = encode(clips[3].samples, container, codec, rate)
    result = client.audio.transcriptions.create(model=MODEL, file=(f"a.{container}", encoded)).text
    errors, words = word_errors(reference, result)
    assert errors / words <= 0.1, (reference, result)


def test_word_timestamps_stay_off_the_silences(live: LiveServer, clips: list[Clip]) -> None:
    """Three clips with 2 s of silence between them: words come in order, inside their
    segments, and none lies in a silence (beyond the 0.2 s the timing keeps around speech)."""
    samples = np.concatenate([clips[0].samples, silence(2), clips[1].samples, silence(2),
                              clips[2].samples])  # fmt: skip
    first_gap = (clips[0].seconds, clips[0].seconds + 2)
    second_gap = (first_gap[1] + clips[1].seconds, first_gap[1] + clips[1].seconds + 2)
    result = live.client().audio.transcriptions.create(
        model=MODEL,
        file=("a.wav", wav(samples)),
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    words = result.words or []
    assert len(words) >= 30
    spoken = " ".join(word.word for word in words)
    assert "Dashwood" in spoken and "young man" in spoken
    previous = 0.0
    for word in words:
        assert previous - 1e-6 <= word.start <= word.end, word
        previous = word.end
        for gap_start, gap_end in (first_gap, second_gap):
            inside = min(word.end, gap_end - 0.2) - max(word.start, gap_start + 0.2)
            assert inside <= 0, f"{word} lies in the silence {gap_start:.2f}–{gap_end:.2f}"
