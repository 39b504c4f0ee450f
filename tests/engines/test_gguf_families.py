"""GGUF import of the architectures beyond llama/qwen2/gemma3: a tiny random mlx-lm model is
written as llama.cpp's converter writes it (tensor names from the `gguf` package's own
`TensorNameMap`, not from the importer's table, so a wrong name in the table fails here) and the
imported model's logits must equal the source model's."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from engines.weights.checkpoint import load_checkpoint
from engines.weights.gguf import GGUFImportError, import_gguf
from tests.families import family_config
from tests.tiny import EOS_ID, VOCAB, _llama_cpp_permute, tiny_metadata

# Per family: config overrides that make the test bite. qwen3: a head size other than hidden /
# heads (the importer must read `attention.key_length`). llama: Llama 3.1's rope scaling, which
# llama.cpp stores as a `rope_freqs` tensor of per-frequency factors (a window of 2048 puts two
# of the eight frequencies of a 16-wide head in the smooth band, as in real Llama 3 heads).
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 2048,
}
CASES: dict[str, dict[str, Any]] = {
    "qwen3": {"head_dim": 24},
    # tests/families.py gives its llama a sliding layer; a llama GGUF has none
    "llama": {"rope_scaling": LLAMA3_SCALING, "layer_types": None, "sliding_window": None},
}


def llama_cpp_rope_factors(config: dict[str, Any]) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors for llama3 rope scaling."""
    import math

    scaling, dim = config["rope_scaling"], int(config["head_dim"])
    old, factor = scaling["original_max_position_embeddings"], scaling["factor"]
    low_wavelength, high_wavelength = (
        old / scaling["low_freq_factor"],
        old / scaling["high_freq_factor"],
    )
    factors = []
    for i in range(0, dim, 2):
        wavelength = 2 * math.pi * config["rope_theta"] ** (i / dim)
        if wavelength < high_wavelength:
            factors.append(1.0)
        elif wavelength > low_wavelength:
            factors.append(factor)
        else:
            smooth = (old / wavelength - scaling["low_freq_factor"]) / (
                scaling["high_freq_factor"] - scaling["low_freq_factor"]
            )
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def tiny(family: str) -> tuple[Any, dict[str, Any]]:
    config = {**family_config(family), **CASES[family]}
    module = importlib.import_module(f"mlx_lm.models.{family}")
    mx.random.seed(7)
    model = module.Model(module.ModelArgs.from_dict(config))
    # Norm weights are ones at init: random ones catch a norm mapped to the wrong place.
    norms = [
        (name, 1.0 + 0.3 * mx.random.normal(value.shape))
        for name, value in tree_flatten(model.parameters())
        if "norm" in name
    ]
    model.load_weights(norms, strict=False)
    mx.eval(model.parameters())
    return model, config


def write_like_llama_cpp(
    model: Any, config: dict[str, Any], arch: str, path: Path, yarn: bool = False
) -> Path:
    import gguf

    layers = int(config["num_hidden_layers"])
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, layers)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config["num_key_value_heads"]))
    writer.add_key_length(int(config["head_dim"]))
    writer.add_value_length(int(config["head_dim"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_freq_base(float(config["rope_theta"]))
    if yarn:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(4.0)
    meta = tiny_metadata()
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_token_merges(meta["tokenizer.ggml.merges"])
    writer.add_eos_token_id(EOS_ID)
    writer.add_chat_template(meta["tokenizer.chat_template"])
    if "rope_scaling" in config:
        writer.add_tensor("rope_freqs.weight", llama_cpp_rope_factors(config))
    for name, value in tree_flatten(model.parameters()):
        base, _, suffix = name.rpartition(".")
        target = names.get_name(base)
        assert target is not None, f"gguf has no name for {base}"
        array = np.array(value.astype(mx.float32))
        if arch == "llama" and base.endswith(("q_proj", "k_proj")):  # llama.cpp's rope layout
            kind = "num_attention_heads" if base.endswith("q_proj") else "num_key_value_heads"
            array = _llama_cpp_permute(array, int(config[kind]))
        writer.add_tensor(f"{target}.{suffix}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("family", sorted(CASES))
def test_imported_logits_match_mlx_lm(family: str, tmp_path: Path) -> None:
    source, config = tiny(family)
    path = write_like_llama_cpp(source, config, family, tmp_path / f"{family}.gguf")
    imported, tokenizer = load_checkpoint(import_gguf(path, tmp_path / "store" / family, True))
    assert type(imported) is type(source)
    tokens = mx.array([[5, 80, 120, 33, 200, 7, 90, VOCAB - 1] * 8])  # 64 positions
    np.testing.assert_allclose(
        np.array(imported(tokens)), np.array(source(tokens)), atol=1e-4, rtol=1e-4
    )
    assert tokenizer.decode(tokenizer.encode("the winter", add_special_tokens=False)) == (
        "the winter"
    )


def test_rope_scaling_other_than_linear_is_refused_in_one_line(tmp_path: Path) -> None:
    source, config = tiny("qwen3")
    path = write_like_llama_cpp(source, config, "qwen3", tmp_path / "yarn.gguf", yarn=True)
    with pytest.raises(GGUFImportError, match="qwen3 with 'yarn' rope scaling") as raised:
        import_gguf(path, tmp_path / "out", dequantize=True)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_the_llama3_rope_scaling_matters_here(tmp_path: Path) -> None:
    """Guard against a vacuous llama case: without its scaling the source model differs."""
    source, config = tiny("llama")
    assert sum(1 < f < 8 for f in llama_cpp_rope_factors(config)) >= 2  # smooth band populated
    unscaled = importlib.import_module("mlx_lm.models.llama").Model(
        importlib.import_module("mlx_lm.models.llama").ModelArgs.from_dict(
            {**config, "rope_scaling": None}
        )
    )
    unscaled.update(source.parameters())
    tokens = mx.array([[5, 80, 120, 33, 200, 7, 90, VOCAB - 1] * 8])
    assert not np.allclose(np.array(unscaled(tokens)), np.array(source(tokens)), atol=1e-3)
