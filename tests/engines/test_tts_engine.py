"""The text-to-speech engine on its real thread, with a tiny random Kokoro written in-process
in the store's layout: audio equal to mlx-audio's own Kokoro on the same weights, pieces in
order, turns between concurrent requests, cancellation, refusals; and the ONNX conversion's
naming and gate rules."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from engines.errors import InvalidRequest, Overloaded
from engines.tts.cpu_conv import GatheredConv
from engines.tts.engine import KokoroEngine
from engines.tts.kokoro import MAX_PHONEMES, NOISE_SEED, Kokoro
from engines.tts.phonemes import phonemize
from engines.tts.text import readings, split_pieces
from engines.types import AudioChunk, Event, SynthesisDone, SynthesisRequest, TTSLimits
from engines.weights.kokoro import HYPER_PARAMETERS, is_kokoro_checkpoint
from engines.weights.kokoro_onnx import _gates, mlx_name, module_path
from engines.weights.store import COMPLETE_MARKER
from tests.servers import wait_until

TEXT = "Hello there. How are you? Fine."


def tiny_config() -> dict:
    """Kokoro's structure, small where mlx-audio lets it be (BERT; the decoder's widths and the
    128+128 style split are fixed in mlx-audio), durations capped so the audio stays short; a
    vocabulary covering the test's phonemes."""
    symbols = sorted(set(phonemize(TEXT + " Good morning, sunny day!")))
    config = json.loads(json.dumps(HYPER_PARAMETERS))
    config["plbert"] = {
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
        "num_hidden_layers": 1,
        "dropout": 0.0,
    }
    config["max_dur"] = 2  # at most 2 frames a phoneme: short audio, fast tests
    config["n_token"] = len(symbols) + 1
    config["vocab"] = {symbol: index + 1 for index, symbol in enumerate(symbols)}
    return config


@pytest.fixture(scope="module")
def tiny_kokoro_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_audio.tts.models.kokoro import Model, ModelConfig

    path = tmp_path_factory.mktemp("kokoro") / "tiny-kokoro"
    path.mkdir()
    config = tiny_config()
    mx.random.seed(1)
    model = Model(ModelConfig.from_dict(config))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    rng = np.random.default_rng(0)
    voices = {name: rng.normal(0, 0.3, (510, 1, 256)).astype(np.float32) for name in ("a", "b")}
    mx.save_safetensors(
        str(path / "voices.safetensors"), {k: mx.array(v) for k, v in voices.items()}
    )
    (path / "config.json").write_text(json.dumps(config))
    meta = {"kind": "tts", "architecture": "kokoro", "sample_rate": 24000, "default_voice": "a"}
    (path / "mlxd.json").write_text(json.dumps(meta))
    (path / COMPLETE_MARKER).write_text("test\n")
    yield path
    shutil.rmtree(path.parent)  # ~290 MB: disk is short on CI machines


@pytest.fixture
async def engine(tiny_kokoro_dir: Path) -> AsyncIterator[KokoroEngine]:
    engine = KokoroEngine("tiny-kokoro", tiny_kokoro_dir, TTSLimits(max_waiting=3))
    engine.start()
    await engine.wait_loaded()
    yield engine
    await asyncio.to_thread(engine.stop)


def reference_audio(path: Path, text: str, voice: str, speed: float) -> np.ndarray:
    """mlx-audio's Kokoro called directly (on this thread) with the same weights and style."""
    import mlx.core as mx
    from mlx_audio.tts.models.kokoro import Model, ModelConfig

    config = json.loads((path / "config.json").read_text())
    model = Model(ModelConfig.from_dict(config))
    model.load_weights(str(path / "model.safetensors"))
    phonemes = "".join(s for s in phonemize(text) if s in config["vocab"])
    voices = cast(dict[str, Any], mx.load(str(path / "voices.safetensors")))
    style = voices[voice][len(phonemes) - 1]  # mlx-audio's KPipeline: pack[n - 1]
    mx.random.seed(NOISE_SEED)
    return np.array(model(phonemes, style, speed), np.float32).reshape(-1)


async def collect(engine: KokoroEngine, text: str, voice: str = "a") -> list[Event]:
    stream = engine.submit(SynthesisRequest("r", text, voice, 1.0))
    return [event async for event in stream]


async def test_info_and_detection(engine: KokoroEngine, tiny_kokoro_dir: Path) -> None:
    assert engine.info is not None
    assert (engine.info.voices, engine.info.default_voice) == (("a", "b"), "a")
    assert engine.info.sample_rate == 24000 and engine.kind == "tts"
    assert is_kokoro_checkpoint(tiny_kokoro_dir)
    assert not is_kokoro_checkpoint(tiny_kokoro_dir.parent)


async def test_audio_equals_mlx_audio_on_the_same_weights(
    engine: KokoroEngine, tiny_kokoro_dir: Path
) -> None:
    events = await collect(engine, "Hello there.", voice="b")
    chunk, done = events
    assert isinstance(chunk, AudioChunk) and isinstance(done, SynthesisDone)
    gathered = [m for _, m in engine._model.model.named_modules() if isinstance(m, GatheredConv)]
    assert len(gathered) == 16  # on the CPU: the vocoder's dilated convolutions (cpu_conv.py)
    expected = reference_audio(tiny_kokoro_dir, "Hello there.", "b", 1.0)  # mlx-audio's convs
    assert chunk.samples.dtype == np.float32 and chunk.samples.size > 0
    np.testing.assert_allclose(chunk.samples, expected, atol=1e-5)
    assert (done.samples, done.tokens) == (chunk.samples.size, chunk.tokens)
    assert chunk.tokens == len("".join(s for s in phonemize("Hello there.") if s.strip() or s))


def test_a_reading_takes_the_style_row_of_its_length() -> None:
    """The style row for n phonemes is row n - 1 (mlx-audio's KPipeline), so a reading of the
    limit's length takes the last of a voice's 510 rows; row n was one past it and failed the
    request (IndexError, a 500). The network is a stand-in that records what it is given."""
    rows = np.arange(MAX_PHONEMES, dtype=np.float32).reshape(MAX_PHONEMES, 1, 1) * np.ones(256)
    seen: list[tuple[str, float]] = []

    def network(phonemes: str, style: object, speed: float) -> np.ndarray:
        seen.append((phonemes, float(np.array(style)[0, 0])))
        return np.zeros(4, np.float32)

    kokoro = object.__new__(Kokoro)
    kokoro.voices = {"a": rows.astype(np.float32)}
    kokoro.vocab = {symbol: 1 for symbol in set(phonemize("1234567890 Hello there."))}
    kokoro.model = network
    numbers = " ".join(["1234567890"] * 27)
    for _, phonemes in kokoro.readings(numbers):
        _, tokens = kokoro.synthesise(phonemes, "a", 1.0)
        assert seen[-1][1] == tokens - 1 == len(seen[-1][0]) - 1
    _, tokens = kokoro.synthesise("x" * MAX_PHONEMES, "a", 1.0)
    assert tokens == MAX_PHONEMES and seen[-1][1] == MAX_PHONEMES - 1


def test_a_piece_that_reads_over_the_limit_is_read_in_parts() -> None:
    """297 characters of numbers are one piece of over 1,000 phonemes: it was cut at
    MAX_PHONEMES and the rest never spoken. Now it is read in parts of at most MAX_PHONEMES,
    cut at spaces, which together hold the whole text and read every number (espeak-ng alone
    stops the whole clause's phonemes at 14 of the 27: parts are read anew)."""
    numbers = " ".join(["1234567890"] * 27)
    assert split_pieces(numbers) == [numbers] and len(phonemize(numbers)) > MAX_PHONEMES
    parts = readings(numbers, phonemize, MAX_PHONEMES)
    assert len(parts) > 1 and all(len(phonemes) <= MAX_PHONEMES for _, phonemes in parts)
    assert " ".join(text for text, _ in parts) == numbers
    assert all(phonemes == phonemize(text) for text, phonemes in parts)
    one_billion = phonemize("1000000000").split()[:2]  # "one billion"
    words = " ".join(phonemes for _, phonemes in parts).split()
    said = [words[i : i + 2] for i in range(len(words) - 1)].count(one_billion)
    assert said == 27


def test_a_long_piece_is_cut_at_clause_marks_before_spaces() -> None:
    """As mlx-audio's KPipeline does: where a clause mark falls within the limit, the cut is
    there, not at the last space that fits; a single word that reads over it is halved."""
    listed = ", ".join(["1234567890"] * 20) + "."
    parts = readings(listed, phonemize, MAX_PHONEMES)
    assert len(parts) > 1 and " ".join(text for text, _ in parts) == listed
    assert all(text.endswith(",") for text, _ in parts[:-1])
    assert all(len(phonemes) <= MAX_PHONEMES for _, phonemes in parts)
    word = "abcdefgh" * 512  # 4,096 characters, OpenAI's input limit, and no space
    halves = readings(word, phonemize, MAX_PHONEMES)
    assert "".join(text for text, _ in halves) == word
    assert len(halves) > 1 and all(len(phonemes) <= MAX_PHONEMES for _, phonemes in halves)


async def test_speaking_leaves_other_threads_generators_alone(engine: KokoroEngine) -> None:
    """The engine seeds MLX's default generator before each piece, and that generator is per
    thread: a draw here after a piece is the draw it would have been without it (this fails if
    MLX makes it process-wide), and the piece's audio is the same each time."""
    import mlx.core as mx

    mx.random.seed(7)
    undisturbed = mx.random.uniform(shape=(4,)).tolist()
    mx.random.seed(7)
    first = await collect(engine, "Hello there.")
    assert mx.random.uniform(shape=(4,)).tolist() == undisturbed
    again = await collect(engine, "Hello there.")
    assert isinstance(first[0], AudioChunk) and isinstance(again[0], AudioChunk)
    np.testing.assert_array_equal(first[0].samples, again[0].samples)


async def test_pieces_come_in_order(engine: KokoroEngine) -> None:
    events = await collect(engine, TEXT)
    chunks = [event for event in events if isinstance(event, AudioChunk)]
    assert [chunk.text for chunk in chunks] == ["Hello there.", "How are you?", "Fine."]
    done = events[-1]
    assert isinstance(done, SynthesisDone)
    assert done.samples == sum(chunk.samples.size for chunk in chunks)
    assert engine.active == 0


async def test_concurrent_requests_take_turns(engine: KokoroEngine) -> None:
    order: list[str] = []

    async def run(name: str) -> None:
        stream = engine.submit(SynthesisRequest(name, "Hi there. Fine.", "a", 1.0))
        async for event in stream:
            if isinstance(event, AudioChunk):
                order.append(name)

    await asyncio.gather(run("first"), run("second"))
    assert sorted(order) == ["first"] * 2 + ["second"] * 2
    assert order.index("second") < len(order) - order[::-1].index("first") - 1  # interleaved


async def test_a_cancelled_request_stops_before_its_next_piece(engine: KokoroEngine) -> None:
    before = engine.pieces_made
    stream = engine.submit(SynthesisRequest("r", TEXT * 3, "a", 1.0))
    async for event in stream:
        assert isinstance(event, AudioChunk)
        stream.cancel()
        break
    assert await wait_until(lambda: engine.active == 0, timeout=30)
    assert engine.pieces_made - before < 9


async def test_unknown_voice_and_overload_are_refused(engine: KokoroEngine) -> None:
    with pytest.raises(InvalidRequest) as refused:
        engine.check_voice("alloy")
    assert refused.value.param == "voice" and "a, b" in refused.value.message
    streams = [engine.submit(SynthesisRequest(f"r{i}", "Hi.", "a", 1.0)) for i in range(3)]
    with pytest.raises(Overloaded):
        engine.submit(SynthesisRequest("r4", "Hi.", "a", 1.0))
    for stream in streams:
        stream.cancel()
    assert await wait_until(lambda: engine.active == 0, timeout=60)


def test_onnx_names_map_to_mlx_audio() -> None:
    assert module_path("/encoder/text_encoder/cnn.0/cnn.0.0/Conv_quant") == "text_encoder.cnn.0.0"
    assert module_path("/encoder/F0.1/conv1x1/Conv_quant") == "predictor.F0.1.conv1x1"
    assert module_path("/encoder/shared/LSTM_quant") == "predictor.shared"
    assert module_path("/decoder/decoder/asr_res/asr_res.0/Conv_quant") == "decoder.asr_res.0"
    assert (
        mlx_name("encoder.bert.embeddings.LayerNorm.weight") == "bert.embeddings.LayerNorm.weight"
    )
    assert mlx_name("encoder.bert_encoder.bias") == "bert_encoder.bias"


def test_lstm_gates_go_from_onnx_iofc_to_torch_ifgo() -> None:
    hidden = 2
    stacked = np.repeat(np.array([0.0, 1.0, 2.0, 3.0]), hidden)  # i, o, f, c blocks
    assert _gates(stacked, hidden).tolist() == [0, 0, 2, 2, 3, 3, 1, 1]
