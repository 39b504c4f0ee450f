"""The GGUF architectures the importer converts, and how each maps onto an mlx-lm model.

One `GGUFArchitecture` per llama.cpp `general.architecture` whose tensors map one to one onto
an mlx-lm model's parameters (the names are llama.cpp's converter's, as the `gguf` package's
`TensorNameMap` writes them). Anything else is refused by name before any tensor is read:
fused or split tensors (phi3's qkv, MoE experts), extra tensors mlx-lm has no place for, or
hyper-parameters the GGUF does not carry would need more than a rename.

Invariants: `layer_names` maps every per-block GGUF tensor base name the architecture writes;
`permuted_qk` is true exactly where llama.cpp's converter permutes Q/K rows (llama only among
these); `norms_plus_one` where the GGUF stores RMS norm weights as 1 + w while mlx-lm adds the 1
itself (gemma).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
QK_NORM_LAYER_NAMES = {
    **LAYER_NAMES,
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
GEMMA3_LAYER_NAMES = {
    **QK_NORM_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Every gemma3 model has global attention on every 6th layer, sliding windows elsewhere, and a
# local rope base of 10000 (llama.cpp's loader sets them too; the GGUF does not carry them).
_GEMMA3_FIXED = {"sliding_window_pattern": 6, "rope_local_base_freq": 10000.0}

Metadata = dict[str, Any]
Config = dict[str, Any]


def _llama(config: Config, metadata: Metadata, tensors: Mapping[str, Any]) -> None:
    config["attention_bias"] = "blk.0.attn_q.bias" in tensors
    config["mlp_bias"] = False


def _no_extra(config: Config, metadata: Metadata, tensors: Mapping[str, Any]) -> None:
    return None


def _gemma3(config: Config, metadata: Metadata, tensors: Mapping[str, Any]) -> None:
    """mlx-lm's gemma3_text arguments: query scale from the head size, windows, eos per turn."""
    config.update(_GEMMA3_FIXED)
    config["query_pre_attn_scalar"] = config["head_dim"]
    config["sliding_window"] = int(metadata["gemma3.attention.sliding_window"])
    tokens = list(metadata.get("tokenizer.ggml.tokens") or [])
    if "<end_of_turn>" in tokens and "eos_token_id" in config:  # instruction-tuned turns end so
        config["eos_token_id"] = [config["eos_token_id"], tokens.index("<end_of_turn>")]


@dataclass(frozen=True)
class GGUFArchitecture:
    model_type: str  # mlx-lm's
    hf_class: str  # config.json `architectures`
    layer_names: dict[str, str]
    permuted_qk: bool = False
    norms_plus_one: bool = False
    required: tuple[str, ...] = ()  # metadata keys (after the arch prefix) the config needs
    extra_config: Callable[[Config, Metadata, Mapping[str, Any]], None] = field(default=_no_extra)


ARCHITECTURES = {
    "llama": GGUFArchitecture(
        "llama", "LlamaForCausalLM", LAYER_NAMES, permuted_qk=True, extra_config=_llama
    ),
    "qwen2": GGUFArchitecture("qwen2", "Qwen2ForCausalLM", LAYER_NAMES),
    "qwen3": GGUFArchitecture("qwen3", "Qwen3ForCausalLM", QK_NORM_LAYER_NAMES),
    "gemma3": GGUFArchitecture(
        "gemma3_text",
        "Gemma3ForCausalLM",
        GEMMA3_LAYER_NAMES,
        norms_plus_one=True,
        required=("attention.key_length", "attention.sliding_window"),
        extra_config=_gemma3,
    ),
}
