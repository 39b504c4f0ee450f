"""`mlxd import hf SOURCE --quantize 4|8`: a float checkpoint quantized by mlx-lm's own converter
into the store; the copy loads on the real engine thread and its greedy tokens equal mlx-lm's own
load + generate of the same quantized weights."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.utils import load

from engines.llm.engine import LLMEngine
from engines.types import ChatLimits, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from engines.weights.store import ModelStore
from server.__main__ import main
from tests.hub_fixture import mlx_lm_quantized_copy
from tests.tiny import save_model_dir, tiny_model

PROMPT = [(7 * j) % 240 + 5 for j in range(20)]
TOKENS = 8


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_dir(tiny_model(), "llama", tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    monkeypatch.setenv("MLXD_HOME", str(tmp_path / "mlxd"))
    return ModelStore(tmp_path / "mlxd")


@pytest.fixture
async def quantized(tiny_dir: Path, store: ModelStore) -> AsyncIterator[tuple[Path, LLMEngine]]:
    """The tiny model imported at 4 bits (default group size), served by an engine."""
    assert main(["import", "hf", str(tiny_dir), "--quantize", "4"]) == 0
    path = store.path_for("tiny-4bit")
    engine = LLMEngine("tiny-4bit", path, prefill_chunk=64, limits=ChatLimits())
    engine.start()
    await engine.wait_loaded()
    yield path, engine
    engine.stop()


async def _greedy(engine: LLMEngine, prompt: list[int]) -> list[int]:
    request = GenerationRequest("q", prompt, TOKENS, SamplingParams(temperature=0.0))
    tokens: list[int] = []
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent):
            tokens += event.token_ids
        elif isinstance(event, FinishEvent):
            return tokens
    raise AssertionError("the stream ended without a FinishEvent")


def _mlx_lm_greedy(path: Path, prompt: list[int]) -> list[int]:
    model, _ = load(str(path))  # type: ignore[misc]
    steps = generate_step(mx.array(prompt), model, max_tokens=TOKENS)
    return [int(token) for token, _ in steps]


async def test_a_4bit_import_serves_what_mlx_lm_generates(
    quantized: tuple[Path, LLMEngine], tiny_dir: Path, store: ModelStore, tmp_path: Path
) -> None:
    path, engine = quantized
    config = json.loads((path / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    assert store.has("tiny-4bit")
    assert store.size_bytes(path) < store.size_bytes(tiny_dir) / 4  # float32 → ~5 bits a weight
    assert await _greedy(engine, PROMPT) == _mlx_lm_greedy(path, PROMPT)
    # The same weights mlx-lm's converter writes with the same options.
    reference = mlx_lm_quantized_copy(tiny_dir, tmp_path / "converted")
    ours = mx.load(str(path / "model.safetensors"))
    theirs = mx.load(str(reference / "model.safetensors"))
    assert isinstance(ours, dict) and isinstance(theirs, dict) and ours.keys() == theirs.keys()
    assert all(mx.array_equal(ours[key], theirs[key]).item() for key in ours)


def test_8bit_with_a_chosen_group_size_and_name(tiny_dir: Path, store: ModelStore) -> None:
    argv = ["import", "hf", str(tiny_dir), "--quantize", "8", "--group-size", "64"]
    assert main([*argv, "--name", "tiny-q8"]) == 0
    config = json.loads((store.path_for("tiny-q8") / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    assert (store.path_for("tiny-q8") / "IMPORTED").read_text().startswith("quantized from ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["QUANTIZED", "--quantize", "4"], "is already quantized (4-bit): serve it as it is"),
        (["TINY", "--group-size", "32"], "--group-size goes with --quantize 4|8"),
        (["TINY"], "usage: mlxd import hf SOURCE --quantize 4|8"),
        (["no-such-model", "--quantize", "4"], "model 'no-such-model' is neither"),
    ],
)
def test_import_errors_are_one_line(
    tiny_dir: Path,
    tmp_path: Path,
    store: ModelStore,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    quantized = tmp_path / "already-4bit"
    if "QUANTIZED" in argv:
        mlx_lm_quantized_copy(tiny_dir, quantized)
    places = {"TINY": str(tiny_dir), "QUANTIZED": str(quantized)}
    assert main(["import", "hf", *(places.get(arg, arg) for arg in argv)]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not store.names()


def test_quantize_is_refused_for_a_gguf_import(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "gguf", "x.gguf", "--quantize", "4"]) == 1
    assert "a GGUF keeps its own quantization" in capsys.readouterr().err
