"""engines/weights/checkpoint.py: a store entry marked DEQUANTIZE_ON_LOAD loads as float32
Linear/Embedding layers holding exactly `mx.dequantize` of its triples (float32 scales), a tied
embedding still serving as the output head; an entry without the mark loads as mlx-lm loads it."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.utils import load

from engines.weights.checkpoint import DEQUANTIZE_ON_LOAD, load_checkpoint
from engines.weights.store import ModelStore
from tests.tiny import save_model_dir, tiny_model

TOKENS = mx.array([[5, 80, 120, 33, 200, 7]])


def quantized_entry(directory: Path, mark: bool) -> Path:
    """tests/tiny.py's llama with tied embeddings, quantized by MLX (4 bits, group 32, float16
    scales as mx.load gives Q4_0/Q4_1), saved as the GGUF importer saves a store entry."""
    model = tiny_model("llama")
    nn.quantize(model, group_size=32, bits=4)
    save_model_dir(model, "llama", directory)
    weights = {
        name: value.astype(mx.float16) if name.endswith((".scales", ".biases")) else value
        for name, value in tree_flatten(model.parameters())
        if not name.startswith("lm_head.")
    }
    mx.save_safetensors(str(directory / "model.safetensors"), weights)
    config = json.loads((directory / "config.json").read_text())
    config.update(tie_word_embeddings=True, quantization={"group_size": 32, "bits": 4})
    if mark:
        config[DEQUANTIZE_ON_LOAD] = True
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_a_marked_entry_loads_as_the_float32_dequantized_model(tmp_path: Path) -> None:
    directory = quantized_entry(tmp_path / "marked", mark=True)
    quantized, _ = load(str(directory))
    model, _ = load_checkpoint(directory)
    layers = dict(model.named_modules())
    assert isinstance(layers["model.embed_tokens"], nn.Embedding)
    assert isinstance(layers["model.layers.0.self_attn.q_proj"], nn.Linear)
    assert not any(isinstance(m, nn.QuantizedLinear) for m in layers.values())
    for name, module in quantized.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            expected = mx.dequantize(
                module.weight,
                module.scales.astype(mx.float32),
                module.biases.astype(mx.float32),
                group_size=32,
                bits=4,
            )
            actual = layers[name].weight
            assert actual.dtype == mx.float32
            assert np.array_equal(np.array(actual), np.array(expected)), name
    logits = np.array(model(TOKENS))
    assert logits.dtype == np.float32 and logits.shape[-1] == model.args.vocab_size
    np.testing.assert_allclose(logits, np.array(quantized(TOKENS)), atol=1e-2)


def test_an_unmarked_entry_loads_as_mlx_lm_loads_it(tmp_path: Path) -> None:
    directory = quantized_entry(tmp_path / "plain", mark=False)
    model, _ = load_checkpoint(directory)
    assert isinstance(dict(model.named_modules())["model.embed_tokens"], nn.QuantizedEmbedding)
    ours = dict(tree_flatten(model.parameters()))
    theirs = dict(tree_flatten(load(str(directory))[0].parameters()))
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(np.array(ours[k]), np.array(theirs[k])) for k in ours)


def test_a_decoder_embedder_reads_a_marked_entry_as_the_float32_model(tmp_path: Path) -> None:
    from engines.embed.decoder import load_decoder

    directory = quantized_entry(tmp_path / "marked", mark=True)
    body = load_decoder(directory, json.loads((directory / "config.json").read_text()))
    expected = dict(tree_flatten(load_checkpoint(directory)[0].model.parameters()))
    actual = dict(tree_flatten(body.parameters()))
    assert actual.keys() == expected.keys()
    for name, value in actual.items():
        assert value.dtype == mx.float32
        assert np.array_equal(np.array(value), np.array(expected[name])), name


def test_the_memory_estimate_of_a_marked_entry_is_its_float32_size(tmp_path: Path) -> None:
    """The pool's memory budget and `mlxd doctor` read `ModelStore.size_bytes`: for an entry
    dequantized on load it is the float32 model, not the compact files."""
    marked = quantized_entry(tmp_path / "marked", mark=True)
    plain = quantized_entry(tmp_path / "plain", mark=False)
    model, _ = load_checkpoint(marked)
    float32 = sum(int(array.nbytes) for _, array in tree_flatten(model.parameters()))
    on_disk = (marked / "model.safetensors").stat().st_size
    assert ModelStore(tmp_path).size_bytes(marked) == float32 > 3 * on_disk
    assert ModelStore(tmp_path).size_bytes(plain) == (plain / "model.safetensors").stat().st_size
