"""The GGUF importer: tiny llama and qwen2 GGUFs written as llama.cpp writes them import into
MLX models whose logits match the source model's, with a working tokenizer and template."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engines.weights import gguf as gguf_module
from engines.weights.checkpoint import DEQUANTIZE_ON_LOAD, load_checkpoint
from engines.weights.gguf import GGUFImportError, import_gguf
from tests.gguf_quantized import write_quantized_gguf
from tests.tiny import CHATML, tiny_model, write_gguf


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_imported_logits_match_source(arch: str, tmp_path: Path) -> None:
    source = tiny_model(arch)
    gguf_path = write_gguf(source, arch, tmp_path / f"tiny-{arch}.gguf")
    imported_dir = import_gguf(gguf_path, tmp_path / "store" / arch, dequantize=True)
    imported, tokenizer = load_checkpoint(imported_dir)

    tokens = mx.array([[5, 80, 120, 33, 200, 7, 90, 150]])
    expected = np.array(source(tokens))
    actual = np.array(imported(tokens))
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)
    assert tokenizer.chat_template == CHATML


def test_unpermute_matters(tmp_path: Path) -> None:
    """Guard against a vacuous match: the GGUF really holds permuted Q rows."""
    source = tiny_model("llama")
    gguf_path = write_gguf(source, "llama", tmp_path / "tiny.gguf")
    tensors = mx.load(str(gguf_path))
    imported, _ = load_checkpoint(import_gguf(gguf_path, tmp_path / "ok", dequantize=True))
    tokens = mx.array([[5, 80, 120, 33]])
    permuted_q = tensors["blk.0.attn_q.weight"]
    assert not np.allclose(
        np.array(permuted_q), np.array(source.model.layers[0].self_attn.q_proj.weight)
    )
    np.testing.assert_allclose(
        np.array(imported(tokens)), np.array(source(tokens)), atol=1e-4, rtol=1e-4
    )


def test_tokenizer_round_trips(tmp_path: Path) -> None:
    gguf_path = write_gguf(tiny_model("llama"), "llama", tmp_path / "tiny.gguf")
    _, tokenizer = load_checkpoint(import_gguf(gguf_path, tmp_path / "m", dequantize=True))
    text = "the winter in Paris: 42 ünïcode ✓"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("<|im_end|>", add_special_tokens=False) == [2]
    assert 2 in tokenizer.eos_token_ids


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFImportError, match="unsupported GGUF architecture 'mamba'"):
        import_gguf(path, tmp_path / "out", dequantize=True)


@pytest.mark.parametrize("kind", ["Q8_0", "Q5_0", "Q5_1", "Q4_1"])
def test_a_quantized_gguf_imports_with_ggufs_own_dequantized_logits_across_shards(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Q8_0/Q4_1 linears: mx.load keeps them as MLX quantized triples. Q5_0/Q5_1 (like the
    K-quants) mx.load would round to float16: the importer decodes them into MLX triples itself.
    Either way they are stored as triples; a CPU import (and any import of a file mx.load cannot
    keep) is marked to be dequantized on load, and runs the float32 weights of gguf's own
    dequantization: the reference's logits exactly. A GPU import of a Q8_0/Q4_1 file runs
    quantized, close to them. Also when the weights are split over several shards."""
    import gguf

    path = tmp_path / f"{kind}.gguf"
    quantized_names = write_quantized_gguf("qwen2", kind, path)

    reference = tiny_model("qwen2")  # the source weights, as gguf dequantizes the quantized ones
    reader = gguf.GGUFReader(str(path))
    dequantized = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    from tests.tiny import _GGUF_NAMES

    to_mlx = {v: k for k, v in _GGUF_NAMES.items()}
    reference.load_weights(
        [
            (
                f"model.layers.{n.split('.')[1]}.{to_mlx[n.split('.')[2]]}.{n.split('.')[3]}",
                mx.array(dequantized[n].astype(np.float32)),
            )
            for n in quantized_names
        ],
        strict=False,
    )
    monkeypatch.setattr(gguf_module, "SHARD_BYTES", 64 * 1024)
    tokens = mx.array([[5, 80, 120, 33, 200, 7, 90, 150]])
    expected = np.array(reference(tokens))
    logits = {}
    for dequantize in (True, False):
        directory = import_gguf(path, tmp_path / f"{kind}-{dequantize}", dequantize=dequantize)
        assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1
        stored = [mx.load(str(shard)) for shard in directory.glob("model-*-of-*.safetensors")]
        linear = "model.layers.0.mlp.down_proj"
        [weight] = [shard[f"{linear}.weight"] for shard in stored if f"{linear}.weight" in shard]
        assert weight.dtype == mx.uint32  # stored as a triple, not float32
        config = json.loads((directory / "config.json").read_text())
        assert config["quantization"] == {"group_size": 32, "bits": 4 if kind == "Q4_1" else 8}
        on_load = dequantize or kind in ("Q5_0", "Q5_1")
        assert config.get(DEQUANTIZE_ON_LOAD, False) == on_load
        imported, _ = load_checkpoint(directory)
        logits[dequantize] = np.array(imported(tokens))
        if on_load:
            np.testing.assert_array_equal(logits[dequantize], expected)
        else:
            np.testing.assert_allclose(logits[dequantize], expected, atol=1e-4, rtol=1e-4)
    assert np.abs(logits[True] - np.array(tiny_model("qwen2")(tokens))).max() > 1e-3


def test_an_unknown_packaged_name_is_refused_in_one_line_naming_the_packaged_llms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.__main__ import main

    monkeypatch.setenv("MLXD_HOME", str(tmp_path))
    assert main(["import", "--packaged", "no-such-model"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    for name in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma3-270m"):
        assert name in error
