"""The ASR engine on its real thread, with a tiny random whisper imported from a CTranslate2 file
written in-process: importer round trip, batching equivalence, cancellation, failures."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from engines.asr.audio import content_frames, log_mel
from engines.asr.engine import ASREngine
from engines.errors import InvalidRequest, Overloaded
from engines.types import (
    ErrorEvent,
    Event,
    Segment,
    SpeechLimits,
    TranscriptionDone,
    TranscriptionRequest,
)
from engines.weights.ct2 import CT2FormatError, import_ct2, read_ct2
from tests.servers import wait_until
from tests.tiny_whisper import write_tiny_ct2


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("whisper")
    return import_ct2(write_tiny_ct2(root / "ct2"), root / "store" / "tiny-whisper")


@pytest.fixture
async def engine(tiny_whisper_dir: Path) -> AsyncIterator[ASREngine]:
    engine = ASREngine("tiny-whisper", tiny_whisper_dir, SpeechLimits(max_batch=4, max_waiting=6))
    engine.start()
    await engine.wait_loaded()
    yield engine
    engine.stop()


def request(seconds: float, seed: int, prompt: str | None = None) -> TranscriptionRequest:
    samples = (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(
        np.float32
    )
    return TranscriptionRequest(
        f"r{seed}", log_mel(samples, 80), content_frames(samples), prompt=prompt, seed=seed
    )


async def run(engine: ASREngine, transcription: TranscriptionRequest) -> list[Event]:
    return [event async for event in engine.submit(transcription)]


def test_import_derives_dimensions_and_names(tiny_whisper_dir: Path) -> None:
    dims = json.loads((tiny_whisper_dir / "config.json").read_text())
    assert dims == {
        "n_mels": 80,
        "n_audio_ctx": 1500,
        "n_audio_state": 32,
        "n_audio_head": 2,
        "n_audio_layer": 1,
        "n_vocab": 256 + 10 + 1501,
        "n_text_ctx": 64,
        "n_text_state": 32,
        "n_text_head": 2,
        "n_text_layer": 1,
    }
    meta = json.loads((tiny_whisper_dir / "mlxd.json").read_text())
    assert meta["kind"] == "speech" and meta["alignment_heads"] == [[0, 0]]


def test_reader_refuses_other_specs(tmp_path: Path) -> None:
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"\x06\x00\x00\x00" + b"\x0c\x00TransformerS\x00")
    with pytest.raises(CT2FormatError, match="not a whisper model"):
        read_ct2(bogus)


async def test_transcription_ends_with_monotonic_segments(engine: ASREngine) -> None:
    events = await run(engine, request(75.0, seed=1, prompt="hello"))
    assert isinstance(events[-1], TranscriptionDone)
    assert events[-1].duration == pytest.approx(75.0)
    segments = [e for e in events if isinstance(e, Segment)]
    assert [s.id for s in segments] == list(range(len(segments)))
    for before, after in itertools.pairwise(segments):
        assert after.start >= before.end
    assert all(0 <= s.start < s.end <= 75.0 for s in segments)
    assert engine.active == 0


async def test_same_request_alone_or_in_a_batch(engine: ASREngine) -> None:
    """Rows with other prompts (so other left-padding) and other audio beside it change nothing:
    the seeded request gives the same segments alone and in a batch of four."""
    alone = await run(engine, request(40.0, seed=5, prompt="a longer prompt than the others"))
    together = await asyncio.gather(
        run(engine, request(40.0, seed=5, prompt="a longer prompt than the others")),
        run(engine, request(20.0, seed=6)),
        run(engine, request(65.0, seed=7, prompt="x")),
        run(engine, request(10.0, seed=8)),
    )
    assert engine.largest_batch == 4
    assert shape(together[0]) == shape(alone)


def shape(events: list[Event]) -> list[tuple[object, ...]]:
    return [
        (e.start, e.end, e.tokens, e.temperature, round(e.avg_logprob, 4))
        if isinstance(e, Segment)
        else (e,)
        for e in events
    ]


async def test_the_gpu_path_transcribes_as_the_cpu_path(engine: ASREngine) -> None:
    """GPUs encode windows (and project the decoder's cross-attention inputs) in MLX, batched,
    with MLX's own softmax and GELU; the CPU device does these in numpy (host_encoder). The
    GPU path, run here on the CPU, gives the same segments for the same requests together."""
    requests = [request(40.0, seed=5, prompt="a prompt"), request(20.0, seed=6)]
    cpu_path = await asyncio.gather(*(run(engine, r) for r in requests))
    assert all(any(isinstance(e, Segment) for e in events) for events in cpu_path)
    engine._host_encoder = None  # what `load` leaves on a GPU
    engine._model.decoder.prompt_math = None
    gpu_path = await asyncio.gather(*(run(engine, r) for r in requests))
    assert [shape(events) for events in gpu_path] == [shape(events) for events in cpu_path]


async def test_cancelled_requests_leave(engine: ASREngine) -> None:
    stream = engine.submit(request(300.0, seed=2))
    stream.cancel()
    assert await wait_until(lambda: engine.active == 0, timeout=60)
    assert engine.stats().active == 0


async def test_queue_bound_and_language_checks(engine: ASREngine) -> None:
    streams = [engine.submit(request(1.0, seed=i)) for i in range(6)]
    with pytest.raises(Overloaded):
        engine.submit(request(1.0, seed=9))
    for stream in streams:
        stream.cancel()
    with pytest.raises(InvalidRequest, match="English-only"):
        engine.check_language("fr", "transcribe")
    with pytest.raises(InvalidRequest, match="cannot translate"):
        engine.check_language(None, "translate")
    assert engine.check_language("English", "transcribe") == "en"
    assert await wait_until(lambda: engine.active == 0, timeout=60)


class _ThreadKiller(BaseException):
    """Not an Exception: what would end an unguarded thread."""


@pytest.mark.parametrize(
    ("injected", "restarts"),
    [(RuntimeError("injected"), 0), (_ThreadKiller("injected"), 1)],
    ids=["step raises", "loop dies"],
)
async def test_a_failure_fails_only_its_requests(
    engine: ASREngine, monkeypatch: pytest.MonkeyPatch, injected: BaseException, restarts: int
) -> None:
    """A step that raises fails the requests in flight; one that kills the loop also restarts
    it in place. Either way the next request is served."""
    real_step = engine.step
    calls = {"n": 0}

    def failing_once() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise injected
        real_step()

    monkeypatch.setattr(engine, "step", failing_once)
    failed = await run(engine, request(5.0, seed=3))
    assert isinstance(failed[-1], ErrorEvent)
    assert engine.running and engine.restarts == restarts and engine.failures == 1
    served = await run(engine, request(5.0, seed=4))
    assert isinstance(served[-1], TranscriptionDone)
    assert engine.active == 0
