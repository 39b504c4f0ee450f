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

# llama.cpp's gemma3 defaults when the GGUF does not say: global attention on every 6th layer,
# sliding windows elsewhere with a rope base of 10000; the 27B (62 layers) scales queries by
# hidden / heads instead of the head size (llama.cpp's models/gemma3.cpp, gemma_pytorch).
_GEMMA3_PATTERN = 6
_GEMMA3_LOCAL_ROPE_BASE = 10000.0
_GEMMA3_27B_LAYERS = 62


class UnsupportedGGUF(ValueError):
    """The GGUF needs something mlx-lm's model for its architecture does not do."""


Metadata = dict[str, Any]
Config = dict[str, Any]


def _llama(config: Config, metadata: Metadata, tensors: Mapping[str, Any]) -> None:
    config["attention_bias"] = "blk.0.attn_q.bias" in tensors
    config["mlp_bias"] = False
    if "rope_freqs.weight" in tensors:  # Llama 3.1+: per-dimension rope factors
        factors = [float(f) for f in tensors["rope_freqs.weight"].tolist()]
        old = int(metadata.get("llama.rope.scaling.original_context_length") or 8192)
        config["rope_scaling"] = llama3_rope_scaling(
            factors, config["rope_theta"], config["head_dim"], old
        )


def llama3_rope_scaling(
    factors: list[float], base: float, head_dim: int, old_context: int
) -> dict[str, Any]:
    """mlx-lm's `llama3` rope_scaling that reproduces llama.cpp's `rope_freqs` factors.

    llama.cpp's converter writes, per rotary frequency, 1 (short wavelengths), `factor` (long
    ones) or 1 / ((1 - s) / factor + s) with s linear in old_context / wavelength between. The
    smooth points give that line; only (high - low) and low relative to old_context matter, so
    old_context is taken as given. The result is checked against every factor, or refused.
    """
    import math

    factor = max(factors)
    wavelengths = [2 * math.pi * base ** (2 * i / head_dim) for i in range(len(factors))]
    smooth = [
        (old_context / w, (1 / f - 1 / factor) / (1 - 1 / factor))
        for w, f in zip(wavelengths, factors, strict=True)
        if 1.0 + 1e-6 < f < factor - 1e-6
    ]
    if factor <= 1.0 or len(smooth) < 2:
        raise UnsupportedGGUF("llama rope_freqs this importer cannot express as llama3 scaling")
    (x0, s0), (x1, s1) = smooth[0], smooth[-1]
    span = (x1 - x0) / (s1 - s0)  # high_freq_factor - low_freq_factor
    low = x0 - s0 * span
    scaling = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": low + span,
        "original_max_position_embeddings": old_context,
    }
    for w, f in zip(wavelengths, factors, strict=True):
        if not math.isclose(_llama3_factor(w, scaling), f, rel_tol=1e-4):
            raise UnsupportedGGUF("llama rope_freqs that llama3 scaling does not reproduce")
    return scaling


def _llama3_factor(wavelength: float, scaling: dict[str, Any]) -> float:
    """The factor mlx-lm's Llama3RoPE applies to one frequency (mlx_lm/models/rope_utils.py)."""
    old, factor = scaling["original_max_position_embeddings"], scaling["factor"]
    if wavelength < old / scaling["high_freq_factor"]:
        return 1.0
    if wavelength > old / scaling["low_freq_factor"]:
        return float(factor)
    s = (old / wavelength - scaling["low_freq_factor"]) / (
        scaling["high_freq_factor"] - scaling["low_freq_factor"]
    )
    return float(1 / ((1 - s) / factor + s))


def _no_extra(config: Config, metadata: Metadata, tensors: Mapping[str, Any]) -> None:
    return None


def _gemma3(config: Config, metadata: Metadata, tensors: Mapping[str, Any]) -> None:
    """mlx-lm's gemma3_text arguments, with llama.cpp's defaults for what the file omits."""
    if float(metadata.get("gemma3.final_logit_softcapping") or 0.0) != 0.0:
        raise UnsupportedGGUF("gemma3 with final logit softcapping (mlx-lm's gemma3_text has none)")
    pattern = metadata.get("gemma3.attention.sliding_window_pattern", _GEMMA3_PATTERN)
    if not isinstance(pattern, int):
        raise UnsupportedGGUF("gemma3 with a per-layer sliding-window pattern")
    window = int(metadata.get("gemma3.attention.sliding_window") or 0)
    config["sliding_window_pattern"] = pattern if window > 0 else 1  # 1: every layer global
    config["sliding_window"] = window if window > 0 else config["max_position_embeddings"]
    config["rope_local_base_freq"] = float(
        metadata.get("gemma3.rope.freq_base_swa") or _GEMMA3_LOCAL_ROPE_BASE
    )
    if config["num_hidden_layers"] == _GEMMA3_27B_LAYERS:
        config["query_pre_attn_scalar"] = config["hidden_size"] // config["num_attention_heads"]
    else:
        config["query_pre_attn_scalar"] = config["head_dim"]
    tokens = list(metadata.get("tokenizer.ggml.tokens") or [])
    if "<end_of_turn>" in tokens and "eos_token_id" in config:  # instruction-tuned turns end so
        config["eos_token_id"] = [config["eos_token_id"], tokens.index("<end_of_turn>")]


def rope_scaling(arch: str, metadata: Metadata) -> dict[str, Any] | None:
    """mlx-lm's `rope_scaling` from the GGUF's (linear only; gemma3 applies it to its global
    layers, as llama.cpp does); other kinds are refused."""
    kind = metadata.get(f"{arch}.rope.scaling.type") or "none"
    factor = float(
        metadata.get(f"{arch}.rope.scaling.factor")
        or metadata.get(f"{arch}.rope.scale_linear")
        or 1.0
    )
    if kind == "none" or factor == 1.0:
        return None
    if kind != "linear":
        raise UnsupportedGGUF(f"{arch} with {kind!r} rope scaling (only linear is converted)")
    return {"rope_type": "linear", "factor": factor}


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
        required=("attention.key_length",),
        extra_config=_gemma3,
    ),
}
