"""Tiny random models for engine and importer tests: built in-process in well under a second.

`tiny_metadata` describes a small byte-level BPE tokenizer with ChatML specials, in GGUF metadata
form, so the same description feeds the importer's tokenizer builder and GGUF files we write.
The end-of-sequence token's output row is zero and the others are large, so greedy decoding never
ends by itself: tests control length with max_tokens, stop strings and stop token ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from engines.byte_level import gpt2_byte_decoder
from engines.weights.gguf import build_tokenizer
from engines.weights.store import COMPLETE_MARKER

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
]
EOS_ID = 2
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġ w", "o r"]


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    by_byte = {byte: char for char, byte in gpt2_byte_decoder().items()}
    return [by_byte[b] for b in range(256)]


def tiny_metadata(pre: str = "default") -> dict[str, Any]:
    tokens = SPECIALS + _bytes_to_unicode() + [m.replace(" ", "") for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.eos_token_id": EOS_ID,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHATML,
    }


VOCAB = len(tiny_metadata()["tokenizer.ggml.tokens"])


def tiny_config(arch: str = "llama") -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_type": arch,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": VOCAB,
        "max_position_embeddings": 256,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "eos_token_id": EOS_ID,
    }
    if arch == "llama":
        config["head_dim"] = 16
    return config


def tiny_model(arch: str = "llama", seed: int = 0) -> Any:
    """A random model of `arch` with float32 weights (scaled so logits are well separated)."""
    if arch == "llama":
        from mlx_lm.models.llama import Model, ModelArgs
    else:
        from mlx_lm.models.qwen2 import Model, ModelArgs  # type: ignore[assignment]
    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(tiny_config(arch)))
    weights = dict(tree_flatten(model.parameters()))
    head = mx.random.normal(weights["lm_head.weight"].shape, key=mx.random.key(seed + 1))
    head[EOS_ID] = 0.0
    model.load_weights([("lm_head.weight", head)], strict=False)
    if arch == "qwen2":  # give the attention biases real values so the importer must map them
        biases = [
            (name, mx.random.normal(value.shape, key=mx.random.key(i)) * 0.1)
            for i, (name, value) in enumerate(weights.items())
            if name.endswith(".bias")
        ]
        model.load_weights(biases, strict=False)
    mx.eval(model.parameters())
    return model


def save_model_dir(model: Any, arch: str, directory: Path) -> Path:
    """An MLX model directory (as the store holds them) for `model`."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(directory / "model.safetensors"), weights)
    (directory / "config.json").write_text(json.dumps(tiny_config(arch)))
    tokenizer, tokenizer_config = build_tokenizer(tiny_metadata(), 256)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (directory / COMPLETE_MARKER).write_text("tiny test model\n")
    return directory


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to llama Q/K rows (the importer must undo it)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


_GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_gguf(model: Any, arch: str, path: Path, pre: str = "default") -> Path:
    """Write `model` as llama.cpp would: GGUF names, permuted llama Q/K, tokenizer metadata."""
    import gguf

    config = tiny_config(arch)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_vocab_size(VOCAB)
    meta = tiny_metadata(pre)
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_token_merges(meta["tokenizer.ggml.merges"])
    writer.add_eos_token_id(EOS_ID)
    writer.add_bos_token_id(1)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    for name, value in tree_flatten(model.parameters()):
        array = np.array(value.astype(mx.float32))
        base, _, suffix = name.rpartition(".")
        if base == "model.embed_tokens":
            target = "token_embd"
        elif base == "model.norm":
            target = "output_norm"
        elif base == "lm_head":
            target = "output"
        else:
            _, _, layer, rest = base.split(".", 3)
            target = f"blk.{layer}.{_GGUF_NAMES[rest]}"
            if arch == "llama" and rest == "self_attn.q_proj":
                array = _llama_cpp_permute(array, config["num_attention_heads"])
            if arch == "llama" and rest == "self_attn.k_proj":
                array = _llama_cpp_permute(array, config["num_key_value_heads"])
        writer.add_tensor(f"{target}.{suffix}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
