"""gemma3 GGUFs: a tiny one written as llama.cpp writes them (GGUF names, norms stored as 1 + w,
a SentencePiece vocabulary with scores and no merges) imports into an mlx-lm gemma3_text model
whose logits match the source model's, with a SentencePiece tokenizer rebuilt from the file."""

from __future__ import annotations

import importlib
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from engines.weights.checkpoint import load_checkpoint
from engines.weights.gguf import import_gguf
from engines.weights.gguf_architectures import GEMMA3_LAYER_NAMES
from tests.families import WINDOW, family_config

PIECES = ["\u2581", "t", "h", "e", "\u2581t", "he", "\u2581the", "a", "\u2581a"]
TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
TOKENS += [f"<0x{b:02X}>" for b in range(256)] + PIECES + ["<end_of_turn>"]
# Longer pieces score higher: SentencePiece merges "▁t" + "he" into "▁the" last.
SCORES = [0.0] * 260 + [-10.0, -10.0, -10.0, -10.0, -3.0, -2.0, -1.0, -10.0, -4.0, 0.0]
TYPES = [3, 3, 3, 2] + [6] * 256 + [1] * len(PIECES) + [4]


def tiny_gemma3(**overrides: object) -> tuple[object, dict[str, object]]:
    config = {**family_config("gemma3_text"), "vocab_size": len(TOKENS), **overrides}
    config["sliding_window_pattern"] = 6  # as every gemma3 (the importer assumes it)
    config["num_hidden_layers"] = 6  # gemma3_text needs one global layer per pattern
    module = importlib.import_module("mlx_lm.models.gemma3_text")
    mx.random.seed(3)
    model = module.Model(module.ModelArgs.from_dict(config))
    # Tied as in gemma3 GGUFs (no `output` tensor): the output layer is the embedding.
    model.load_weights([("lm_head.weight", model.model.embed_tokens.weight)], strict=False)
    mx.eval(model.parameters())
    return model, config


def write_gemma3_gguf(model: object, config: dict[str, object], path: Path) -> Path:
    import gguf

    to_gguf = {hf: ours for ours, hf in GEMMA3_LAYER_NAMES.items()}
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(int(config["num_hidden_layers"]))  # type: ignore[call-overload]
    writer.add_context_length(512)
    writer.add_embedding_length(int(config["hidden_size"]))  # type: ignore[call-overload]
    writer.add_feed_forward_length(int(config["intermediate_size"]))  # type: ignore[call-overload]
    writer.add_head_count(int(config["num_attention_heads"]))  # type: ignore[call-overload]
    writer.add_head_count_kv(int(config["num_key_value_heads"]))  # type: ignore[call-overload]
    writer.add_key_length(16)
    writer.add_value_length(16)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_sliding_window(WINDOW)
    if "rope_local_base_freq" in config:
        writer.add_rope_freq_base_swa(float(config["rope_local_base_freq"]))  # type: ignore[arg-type]
    if "rope_scaling" in config:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config["rope_scaling"]["factor"])  # type: ignore[index]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores(SCORES)
    writer.add_token_types(TYPES)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    for name, value in tree_flatten(model.parameters()):  # type: ignore[attr-defined]
        array = np.array(value.astype(mx.float32))
        base, _, suffix = name.rpartition(".")
        if base == "lm_head":
            continue  # tied
        if base == "model.embed_tokens":
            target = "token_embd"
        elif base == "model.norm":
            target = "output_norm"
        else:
            _, _, layer, rest = base.split(".", 3)
            target = f"blk.{layer}.{to_gguf[rest]}"
        if target.endswith("norm"):
            array = array + 1.0  # llama.cpp stores gemma's norms as 1 + w
        writer.add_tensor(f"{target}.{suffix}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# The long-context gemma3s (4B and up) scale their global layers' rope linearly; a GGUF may name
# its own local rope base. Both must reach mlx-lm's config, or positions drift.
LONG_CONTEXT = {"rope_scaling": {"rope_type": "linear", "factor": 8.0}, "rope_local_base_freq": 2e4}


def test_rope_settings_in_the_gguf_reach_the_model(tmp_path: Path) -> None:
    source, config = tiny_gemma3(**LONG_CONTEXT)
    path = write_gemma3_gguf(source, config, tmp_path / "long.gguf")
    imported, _ = load_checkpoint(import_gguf(path, tmp_path / "store" / "long", dequantize=True))
    tokens = mx.array([[2, *range(266, 269), *range(40, 60)]])  # past the 8-token window
    np.testing.assert_allclose(
        np.array(imported(tokens)), np.array(source(tokens)), atol=1e-4, rtol=1e-4
    )
    plain, _ = tiny_gemma3()
    assert not np.allclose(np.array(plain(tokens)), np.array(source(tokens)), atol=1e-3)


def test_a_gemma3_gguf_imports_with_matching_logits_and_tokenizer(tmp_path: Path) -> None:
    source, config = tiny_gemma3()
    path = write_gemma3_gguf(source, config, tmp_path / "tiny-gemma3.gguf")
    directory = import_gguf(path, tmp_path / "store" / "g3", dequantize=True)
    imported, tokenizer = load_checkpoint(directory)
    tokens = mx.array([[2, 266, 5, 80, 120, 267, 33, 200]])
    np.testing.assert_allclose(
        np.array(imported(tokens)), np.array(source(tokens)), atol=1e-4, rtol=1e-4
    )
    # BOS first; no space prefix: "the" is "t" "he", " the" is "▁the", " a" is "▁a".
    assert tokenizer.encode("the a") == [2, 261, 265, 268]
    assert tokenizer.encode(" the") == [2, 266]
    assert tokenizer.decode(tokenizer.encode("the ü", add_special_tokens=False)) == "the ü"
    assert tokenizer.encode("<end_of_turn>", add_special_tokens=False) == [269]
    assert {1, 269} <= set(tokenizer.eos_token_ids)
