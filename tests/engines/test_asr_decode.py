"""Whisper's pieces on a tiny random model, on the test's own thread: the CPU's numpy encoder
computes what the MLX encoder computes, and a window decodes to the same tokens whether it is
decoded alone or joins a running batch mid-way beside windows that come and go."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from engines.asr.decode import WindowBatch, WindowResult, WindowTask
from engines.asr.host_encoder import PROMPT_MATH, HostEncoder, gelu
from engines.asr.vocab import WhisperVocab
from engines.asr.whisper import Whisper, load_whisper
from engines.weights.ct2 import import_ct2
from tests.tiny_whisper import write_tiny_ct2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Whisper, WhisperVocab, list[int]]:
    root = tmp_path_factory.mktemp("whisper")
    path = import_ct2(write_tiny_ct2(root / "ct2"), root / "store" / "tiny-whisper")
    meta = json.loads((path / "mlxd.json").read_text())
    return load_whisper(path), WhisperVocab(path), meta.get("suppress_ids", [])


def test_host_encoder_matches_mlx(tiny: tuple[Whisper, WhisperVocab, list[int]]) -> None:
    model = tiny[0]
    mel = np.random.default_rng(0).standard_normal((2, 3000, 80)).astype(np.float32)
    expected = np.array(model.encoder(mx.array(mel)))
    host = HostEncoder(model)
    got = host(mel)
    assert got.shape == expected.shape
    assert np.allclose(got, expected, atol=2e-4), np.abs(got - expected).max()
    expected_kv = model.decoder.cross_kv(mx.array(got[1:2]))
    for (keys, values), (mlx_keys, mlx_values) in zip(
        host.cross_kv(got[1]), expected_kv, strict=True
    ):
        assert np.allclose(keys, np.array(mlx_keys), atol=1e-4)
        assert np.allclose(values, np.array(mlx_values), atol=1e-4)


def test_prompt_passes_with_host_math_match_mlx(
    tiny: tuple[Whisper, WhisperVocab, list[int]],
) -> None:
    model = tiny[0]
    decoder = model.decoder
    features = mx.array(
        np.random.default_rng(2).standard_normal((2, 1500, model.dims.n_audio_state), np.float32)
    )
    tokens = mx.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    pads = np.array([0, 2])
    expected = np.array(decoder(tokens, decoder.start(features, pads)))
    decoder.prompt_math = PROMPT_MATH
    try:
        got = np.array(decoder(tokens, decoder.start(features, pads)))
    finally:
        decoder.prompt_math = None
    for row, pad in enumerate(pads):  # padded positions are masked out: garbage on both sides
        assert np.allclose(got[row, pad:], expected[row, pad:], atol=1e-4)


def test_gelu_is_the_exact_one() -> None:
    x = np.linspace(-8, 8, 100_001, dtype=np.float32)
    assert np.allclose(
        gelu(x), np.array(mx.array(x) * 0.5 * (1 + mx.erf(mx.array(x) / 2**0.5))), atol=1e-6
    )


def test_windows_joining_a_running_batch_decode_as_alone(
    tiny: tuple[Whisper, WhisperVocab, list[int]],
) -> None:
    model, vocab, suppress = tiny
    rng = np.random.default_rng(1)
    features = mx.array(rng.standard_normal((4, 1500, model.dims.n_audio_state)).astype(np.float32))
    start = vocab.sot_sequence("en", "transcribe")
    tasks = [
        WindowTask(start, 0, 0.0, 1),
        WindowTask([vocab.sot_prev, 5, 6, 7, *start], 4, 0.0, 2),
        WindowTask([vocab.sot_prev, 9, *start], 2, 0.7, 3),  # sampled, with its own seed
        WindowTask(start, 0, 0.0, 4),
    ]

    def alone(i: int) -> WindowResult:
        batch = WindowBatch(model, vocab, suppress)
        batch.add(model.decoder.cross_kv(features[i : i + 1]), [tasks[i]], [i])
        while True:
            finished = batch.step()
            if finished:
                return finished[0][1]

    expected = {i: alone(i) for i in range(4)}
    batch = WindowBatch(model, vocab, suppress)
    results: dict[int, WindowResult] = {}
    largest = 0
    left_early = False
    for step in range(200):
        if step in (0, 3, 7):  # windows 0, 1 and 2 join at different steps
            i = (0, 3, 7).index(step)
            batch.add(model.decoder.cross_kv(features[i : i + 1]), [tasks[i]], [i])
        if step == 5:  # window 3 joins and is cancelled two steps later
            batch.add(model.decoder.cross_kv(features[3:4]), [tasks[3]], [3])
        if step == 9:
            batch.remove({3})
        largest = max(largest, len(batch))
        finished = batch.step()
        results.update(finished)
        left_early = left_early or bool(finished and batch)
        if len(results) == 3 and not batch:
            break
    assert largest == 4
    assert left_early  # a window finished while others went on decoding
    assert set(results) == {0, 1, 2}
    for i in (0, 1, 2):
        assert results[i].tokens == expected[i].tokens
        assert results[i].avg_logprob == pytest.approx(expected[i].avg_logprob, abs=1e-4)
        assert results[i].no_speech_prob == pytest.approx(expected[i].no_speech_prob, abs=1e-5)


def test_a_vanishing_temperature_decodes_as_greedy(
    tiny: tuple[Whisper, WhisperVocab, list[int]],
) -> None:
    """1e-320 is a valid temperature (> 0); dividing logits by it overflows into inf rows, so
    it is read as 0 (the argmax it asks for)."""
    model, vocab, suppress = tiny
    rng = np.random.default_rng(2)
    features = mx.array(rng.standard_normal((1, 1500, model.dims.n_audio_state)).astype(np.float32))
    start = vocab.sot_sequence("en", "transcribe")

    def decoded(temperature: float) -> WindowResult:
        batch = WindowBatch(model, vocab, suppress)
        batch.add(model.decoder.cross_kv(features), [WindowTask(start, 0, temperature, 1)], [0])
        while True:
            finished = batch.step()
            if finished:
                return finished[0][1]

    assert decoded(1e-320).tokens == decoded(0.0).tokens
