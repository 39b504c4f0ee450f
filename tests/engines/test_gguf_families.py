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
from mlx_lm.utils import load

from engines.weights.gguf import GGUFImportError, import_gguf
from tests.families import family_config
from tests.tiny import EOS_ID, VOCAB, tiny_metadata

# Per family: config overrides that make the test bite (a head size other than hidden / heads,
# so the importer must read it from `attention.key_length`).
CASES: dict[str, dict[str, Any]] = {"qwen3": {"head_dim": 24}}


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
    for name, value in tree_flatten(model.parameters()):
        base, _, suffix = name.rpartition(".")
        target = names.get_name(base)
        assert target is not None, f"gguf has no name for {base}"
        writer.add_tensor(f"{target}.{suffix}", np.array(value.astype(mx.float32)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("family", sorted(CASES))
def test_imported_logits_match_mlx_lm(family: str, tmp_path: Path) -> None:
    source, config = tiny(family)
    path = write_like_llama_cpp(source, config, family, tmp_path / f"{family}.gguf")
    imported, tokenizer = load(str(import_gguf(path, tmp_path / "store" / family, True)))
    assert type(imported) is type(source)
    tokens = mx.array([[5, 80, 120, 33, 200, 7, 90, VOCAB - 1]])
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
