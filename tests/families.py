"""Tiny random float32 models of every cache family mlx-lm 0.32.2 serves (issue 21, item 4).

Each entry is a `config.json` small enough to build and run in milliseconds on a CPU, with
sliding windows of a few tokens so that rotating caches wrap inside a test. `tiny_family(name)`
builds the model with mlx-lm's own `Model` class (random weights, fixed seed, the EOS row of the
output zeroed as in tests/tiny.py so greedy decoding never stops by itself);
`save_family_dir` writes it as a model directory the engine loads.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from tests.tiny import EOS_ID, VOCAB, save_model_dir

WINDOW = 8  # sliding windows: short prompts already rotate them

_BASE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "vocab_size": VOCAB,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "eos_token_id": EOS_ID,
}

_SSM = {  # mamba-style mixer arguments shared by the hybrid families
    "mamba_n_heads": 4,
    "mamba_d_head": 16,
    "mamba_d_state": 8,
    "mamba_d_conv": 4,
    "mamba_n_groups": 1,
    "mamba_proj_bias": False,
    "mamba_conv_bias": True,
}

FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {},
    "gemma3_text": {
        "sliding_window": WINDOW,
        "sliding_window_pattern": 2,
        "query_pre_attn_scalar": 16,
    },
    "gpt_oss": {
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
    },
    "olmo3": {
        "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
    },
    "cohere2": {"sliding_window": WINDOW, "sliding_window_pattern": 2, "layer_norm_eps": 1e-5},
    "ministral3": {
        "sliding_window": WINDOW,
        "rope_parameters": {
            "rope_theta": 10000.0,
            "rope_type": "default",
            "llama_4_scaling_beta": 0.1,
            "original_max_position_embeddings": 512,
        },
        "layer_types": ["sliding_attention", "full_attention"],
    },
    "llama4": {
        "text_config": {
            **_BASE,
            "model_type": "llama4_text",
            "num_hidden_layers": 4,
            "attention_bias": False,
            "attention_chunk_size": WINDOW,
            "interleave_moe_layer_step": 2,
            "intermediate_size_mlp": 128,
            "num_experts_per_tok": 1,
            "num_local_experts": 2,
            "rope_scaling": None,
            "use_qk_norm": True,
        },
    },
    "qwen3_next": {
        "num_hidden_layers": 4,
        "full_attention_interval": 2,
        "linear_num_value_heads": 4,
        "linear_num_key_heads": 2,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "shared_expert_intermediate_size": 64,
        "mlp_only_layers": [],
        "moe_intermediate_size": 64,
        "partial_rotary_factor": 0.5,
    },
    "qwen3_5": {
        "num_hidden_layers": 4,
        "full_attention_interval": 2,
        "linear_num_value_heads": 4,
        "linear_num_key_heads": 2,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
    },
    "lfm2": {
        "norm_eps": 1e-5,
        "conv_bias": False,
        "conv_L_cache": 3,
        "block_dim": 64,
        "block_ff_dim": 128,
        "block_multiple_of": 16,
        "block_ffn_dim_multiplier": 1.0,
        "block_auto_adjust_ff_dim": False,
        "full_attn_idxs": [1],
    },
    "mamba2": {
        "num_heads": 8,
        "head_dim": 16,
        "state_size": 8,
        "layer_norm_epsilon": 1e-5,
        "conv_kernel": 4,
        "n_groups": 1,
        "use_bias": False,
        "use_conv_bias": True,
        "time_step_limit": [0.0, 1e9],
        "time_step_rank": "auto",
    },
    "granitemoehybrid": {
        **_SSM,
        "attention_bias": False,
        "embedding_multiplier": 1.0,
        "attention_multiplier": 0.25,
        "logits_scaling": 1.0,
        "residual_multiplier": 1.0,
        "layer_types": ["mamba", "attention"],
        "mamba_d_head": 32,  # heads × head size must equal intermediate_size
    },
    "falcon_h1": {
        **_SSM,
        "mamba_d_ssm": 64,
        "mamba_expand": 2,
        "mamba_chunk_size": 16,
        "mamba_norm_before_gate": False,
        "mamba_rms_norm": False,
        "mamba_use_mlp": True,
    },
}


def family_config(family: str) -> dict[str, Any]:
    return {"model_type": family, **_BASE, **FAMILIES[family]}


def tiny_family(family: str, seed: int = 0) -> Any:
    """A random float32 model of `family` built by mlx-lm's own Model class."""
    module = importlib.import_module(f"mlx_lm.models.{family}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(family_config(family)))
    if hasattr(model, "sanitize"):
        pass  # random weights are already in mlx-lm's layout
    model.update(tree_map(lambda a: a.astype(mx.float32), model.parameters()))
    weights = dict(tree_flatten(model.parameters()))
    head_name = next((n for n in weights if n.endswith("lm_head.weight")), None)
    if head_name is not None:
        head = mx.random.normal(weights[head_name].shape, key=mx.random.key(seed + 1))
        head[EOS_ID] = 0.0
        model.load_weights([(head_name, head)], strict=False)
    mx.eval(model.parameters())
    return model


def save_family_dir(family: str, directory: Path, seed: int = 0) -> Path:
    """A model directory the engine loads: the family's weights, config and the tiny tokenizer."""
    save_model_dir(tiny_family(family, seed), family, directory)
    (directory / "config.json").write_text(json.dumps(family_config(family)))
    return directory
