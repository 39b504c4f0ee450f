"""Tiny random float32 models of every model family mlx-lm 0.32.2 ships (issue 21, item 4).

`MODULES` lists every model module in the installed `mlx_lm.models` (the families mlx-lm can
build). Each family's `config.json` is one generic set of small arguments (`_BASE`: 64-wide, two
layers, four experts, an 8-token sliding window so that 20-token prompts rotate it) plus the
family's own overrides (`FAMILIES`); `SKIPPED` names the families that cannot be built this way
and why. `tiny_family(name)` builds the model with mlx-lm's own `Model` class (random weights,
fixed seed; the output layer, or the embedding where it is tied, drawn from N(0, 1) so that
logits are well separated, its EOS row zeroed as in tests/tiny.py so that greedy decoding never
stops by itself); `save_family_dir` writes it as a model directory the engine loads.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx_lm.models
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models.base import BaseModelArgs

from tests.tiny import EOS_ID, VOCAB, save_model_dir

MAX_PARAMETERS = 5_000_000  # a tiny model has well under a million
TIED_LAYER_SCALE = 4.0  # see tiny_family
WINDOW = 8  # sliding windows: short prompts already rotate them

# Modules of mlx_lm.models that are building blocks, not model families.
_NOT_FAMILIES = {
    "activations",
    "base",
    "bitlinear_layers",
    "cache",
    "gated_delta",
    "mla",
    "pipeline",
    "rope_utils",
    "ssm",
    "switch_layers",
}

MODULES = sorted(
    m.name for m in pkgutil.iter_modules(mlx_lm.models.__path__) if m.name not in _NOT_FAMILIES
)

# One small value for each argument name the families share; a family's ModelArgs reads those it
# declares and ignores the rest.
_BASE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "layer_norm_eps": 1e-5,
    "layer_norm_epsilon": 1e-5,
    "norm_eps": 1e-5,
    "vocab_size": VOCAB,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "eos_token_id": EOS_ID,
    "attention_bias": False,
    "mlp_bias": False,
    "use_bias": False,
    "use_qkv_bias": False,
    "use_conv_bias": True,
    "conv_bias": False,
    "partial_rotary_factor": 0.5,
    "hidden_act": "silu",
    "sliding_window": WINDOW,
    "layer_types": ["sliding_attention", "full_attention"],
    "shared_intermediate_size": 64,
    # mixtures of experts
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "n_shared_experts": 1,
    "num_shared_experts": 1,
    "num_shared_expert": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.0,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "moe_layer_freq": 1,
    # multi-head latent attention
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    # GPT-2-style names
    "n_ctx": 512,
    "n_positions": 512,
    "n_embd": 64,
    "n_head": 4,
    "n_layer": 2,
    "n_inner": 128,
    "n_kv_heads": 2,
    "block_size": 512,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    # state-space and linear-attention layers
    "conv_kernel": 4,
    "state_size": 8,
    "time_step_rank": "auto",
    "n_groups": 1,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_conv_kernel_dim": 4,
    # muP-style scales
    "logits_scaling": 1.0,
    "attention_multiplier": 0.25,
    "embedding_multiplier": 1.0,
    "residual_multiplier": 1.0,
    "dim_model_base": 64,
    "scale_depth": 1.0,
    "scale_emb": 1.0,
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


_DROP = object()  # an override that removes a `_BASE` argument from the family's config


def _text(model_type: str, **extra: Any) -> dict[str, Any]:
    """A `text_config`: the config of the family `model_type` with `extra` (for the families
    that wrap one), resolved by `family_config`."""
    return {"text_config": (model_type, extra)}


_ROPE_DEFAULT = {"rope_type": "default", "rope_theta": 10000.0}
_ROPE_PER_LAYER_TYPE = {"sliding_attention": _ROPE_DEFAULT, "full_attention": _ROPE_DEFAULT}
_KDA = {  # Kimi delta attention on the first layer, full attention on the second
    "kda_layers": [1],
    "full_attn_layers": [2],
    "num_heads": 4,
    "head_dim": 16,
    "short_conv_kernel_size": 4,
}
_YARN = {
    "type": "yarn",
    "rope_type": "yarn",
    "factor": 2.0,
    "original_max_position_embeddings": 256,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}

FAMILIES: dict[str, dict[str, Any]] = {
    "afm7": {"hidden_dim": 64, "num_kv_reuse_layers": 1, "num_layers": 3},
    "afmoe": {"num_dense_layers": 1, "mup_enabled": False},
    "apertus": {"post_norm": False, "qk_norm": True},
    "baichuan_m1": {"sliding_window_layers": [0], "conv_window": 2},
    "bailing_hybrid": {"layer_group_size": 2, "group_norm_size": 1, "num_hidden_layers": 4},
    "bailing_moe_linear": {"layer_group_size": 2, "group_norm_size": 1, "num_hidden_layers": 4},
    "cohere2": {"sliding_window_pattern": 2},
    "dbrx": {
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2},
        "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0},
    },
    "deepseek_v2": {"rope_scaling": _YARN},
    # mlx-lm reads the pattern as a string of L(ocal)/G(lobal); transformers' config then needs
    # the layer types spelled out, or it computes them from the pattern as a number.
    "exaone4": {
        "sliding_window_pattern": "LG",
        "layer_types": _BASE["layer_types"],
        "rope_scaling": None,
    },
    "exaone_moe": {"is_moe_layer": [False, True]},
    "gear": {},
    "gemma3": _text("gemma3_text"),
    "gemma3_text": {"sliding_window_pattern": 2, "query_pre_attn_scalar": 16},
    "gemma4": _text(
        "gemma4_text",
        num_kv_shared_layers=0,
        vocab_size_per_layer_input=VOCAB,
        hidden_size_per_layer_input=16,
        global_head_dim=16,
        sliding_window_pattern=2,
    ),
    "gemma4_text": {
        "num_kv_shared_layers": 0,
        "vocab_size_per_layer_input": VOCAB,
        "hidden_size_per_layer_input": 16,
        "global_head_dim": 16,
        "sliding_window_pattern": 2,
        "layer_types": None,
    },
    "glm4_moe": {"use_qk_norm": True, "rope_scaling": None},
    "glm_moe_dsa": {
        "index_head_dim": 16,
        "index_n_heads": 2,
        "index_topk": 4,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "rope_parameters": _ROPE_DEFAULT,
    },
    "gpt_neox": {"rotary_emb_base": 10000.0, "rotary_pct": 0.5},
    "gptj": {"rotary_dim": 8},
    "hunyuan": {
        "rope_scaling": {"alpha": 1.0, "factor": 1.0, "type": "dynamic"},
        "use_mixed_mlp_moe": True,
        "use_qk_norm": True,
        "use_cla": False,
        "cla_share_factor": 1,
    },
    "jamba": {
        "attn_layer_offset": 1,
        "attn_layer_period": 2,
        "expert_layer_offset": 1,
        "expert_layer_period": 2,
        "mamba_d_conv": 4,
        "mamba_d_state": 8,
        "mamba_expand": 2,
    },
    "kimi_k25": _text("deepseek_v3"),
    "kimi_k3": {"hidden_act": "situ", "linear_attn_config": _KDA, "num_experts_per_token": 2},
    "kimi_linear": {
        "linear_attn_config": _KDA,
        "model_max_length": 512,
    },
    "kimi_vl": _text("deepseek_v3"),
    "lfm2-vl": _text("lfm2"),
    "lfm2_moe": {
        "use_expert_bias": True,
        "num_dense_layers": 1,
        "conv_L_cache": 3,
        "full_attn_idxs": [1],
    },
    "llama4_text": {"intermediate_size_mlp": 128, "no_rope_layers": [1, 0], "use_qk_norm": True},
    "longcat_flash": {
        "attention_method": "MLA",
        "zero_expert_type": "identity",
        "ffn_hidden_size": 64,
        "expert_ffn_hidden_size": 32,
        "zero_expert_num": 1,
        "mla_scale_q_lora": True,
        "mla_scale_kv_lora": True,
    },
    "longcat_flash_ngram": {
        "attention_method": "MLA",
        "zero_expert_type": "identity",
        "ffn_hidden_size": 64,
        "expert_ffn_hidden_size": 32,
        "zero_expert_num": 1,
        "mla_scale_q_lora": True,
        "mla_scale_kv_lora": True,
    },
    "mellum": {"rope_parameters": _ROPE_PER_LAYER_TYPE},
    "mimo_v2_flash": {
        "hybrid_layer_pattern": [1, 0],
        "moe_layer_freq": [0, 1],
        "add_swa_attention_sink_bias": True,
        "add_full_attention_sink_bias": False,
        "sliding_window_size": WINDOW,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "swa_rope_theta": 10000.0,
        "swa_num_attention_heads": 4,
        "swa_num_key_value_heads": 2,
        "swa_head_dim": 16,
        "swa_v_head_dim": 16,
        "layernorm_epsilon": 1e-5,
    },
    "minicpm3": {"rope_scaling": {"original_max_position_embeddings": 256}},
    "minimax": {"rotary_dim": 8},
    "ministral3": {
        "rope_parameters": {
            "rope_theta": 10000.0,
            "rope_type": "default",
            "llama_4_scaling_beta": 0.1,
            "original_max_position_embeddings": 512,
        },
    },
    "mistral3": _text("ministral3"),
    "mistral4": {
        "rope_parameters": {
            **_ROPE_DEFAULT,
            "llama_4_scaling_beta": 0.1,
            "original_max_position_embeddings": 512,
        },
    },
    "llama4": _text(
        "llama4_text",
        num_hidden_layers=4,
        no_rope_layers=[1, 1, 1, 0],
        attention_chunk_size=WINDOW,
        interleave_moe_layer_step=2,
        num_experts_per_tok=1,
        num_local_experts=2,
        attention_bias=False,
        max_position_embeddings=512,
        rope_scaling=None,
    ),
    "gemma3n": {
        "text_config": {
            **_BASE,
            "model_type": "gemma3n_text",
            "num_kv_shared_layers": 0,
            "vocab_size_per_layer_input": VOCAB,
            "rope_local_base_freq": 10000.0,
            "final_logit_softcapping": 30.0,
            "activation_sparsity_pattern": [0.0, 0.0],
            "hidden_size_per_layer_input": 16,
            "altup_num_inputs": 2,
            "altup_coef_clip": 120.0,
            "altup_correct_scale": True,
            "altup_active_idx": 0,
            "laurel_rank": 8,
        },
    },
    "minimax_m3_vl": {
        "text_config": {
            **_BASE,
            "dense_intermediate_size": 128,
            "layer_types": None,
            "mlp_layer_types": None,
            "moe_layer_freq": None,
        },
    },
    "muse_spark": {
        "text_config": {
            **_BASE,
            "post_norm_eps": 1e-5,
            "rope_parameters": _ROPE_DEFAULT,
            "layer_rope_theta": [10000.0, 0],
            "final_logit_softcapping": 30.0,
            "output_multiplier": 1.0,
            "moe_hidden_size": 32,
            "num_shared_experts": 0,
        },
    },
    "nemotron-nas": {
        "block_configs": [
            {"attention": {"n_heads_in_group": 2}, "ffn": {"ffn_mult": 1.0}},
            {"attention": {"no_op": True}, "ffn": {"ffn_mult": 1.0}},
        ],
    },
    "nemotron_h": {
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "mamba_proj_bias": False,
        "ssm_state_size": 8,
        "layers_block_type": ["mamba", "attention", "mlp", "moe"],
        "layer_types": _DROP,
        "time_step_limit": [0.0, 1e9],
        "moe_shared_expert_intermediate_size": 32,
    },
    "olmo_hybrid": {
        "linear_allow_neg_eigval": True,
        "layer_types": ["linear_attention", "full_attention"],
    },
    "openelm": {
        "num_transformer_layers": 2,
        "model_dim": 64,
        "ffn_dim_divisor": 16,
        "num_query_heads": [4, 4],
        "num_kv_heads": [2, 2],
        "ffn_multipliers": [1.0, 2.0],
    },
    "phi3small": {
        "dense_attention_every_n_layers": 2,
        "ff_intermediate_size": 128,
        "gegelu_limit": 20.0,
        "blocksparse_block_size": 32,
        "blocksparse_num_local_blocks": 1,
        "blocksparse_vert_stride": 2,
    },
    "phixtral": {
        "num_vocab": VOCAB,
        "model_dim": 64,
        "num_heads": 4,
        "num_layers": 2,
        "rotary_dim": 8,
    },
    "pixtral": _text("llama"),
    "plamo": {"n_shared_head": 2},
    "plamo3": {"sliding_window_pattern": 2},
    "qwen": {"kv_channels": 16, "num_attention_heads": 4},
    "qwen3_5": {"num_hidden_layers": 4, "full_attention_interval": 2, "layer_types": None},
    "qwen3_5_moe": {"num_hidden_layers": 4, "full_attention_interval": 2, "layer_types": None},
    "qwen3_next": {
        "num_hidden_layers": 4,
        "full_attention_interval": 2,
        "moe_intermediate_size": 64,
        "shared_expert_intermediate_size": 64,
        "layer_types": None,
    },
    "qwen3_vl_moe": _text("qwen3_moe"),
    "recurrent_gemma": {
        "num_hidden_layers": 3,
        "conv1d_width": 4,
        "logits_soft_cap": 30.0,
        "attention_window_size": WINDOW,
        "block_types": ["recurrent", "recurrent", "attention"],
    },
    "rwkv7": {
        "a_low_rank_dim": 8,
        "v_low_rank_dim": 8,
        "gate_low_rank_dim": 8,
        "decay_low_rank_dim": 8,
    },
    "spark2_5": {"rope_parameters": _ROPE_PER_LAYER_TYPE, "hidden_act": "gelu"},
    "step3p5": {
        "num_attention_groups": 2,
        "moe_num_experts": 4,
        "moe_top_k": 2,
        "share_expert_dim": 32,
    },
    "lfm2": {
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
        "layer_norm_epsilon": 1e-5,
        "time_step_limit": [0.0, 1e9],
    },
    "granitemoehybrid": {
        **_SSM,
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

# Families this module does not build, and why (tests list them; docs/families.md shows them).
SKIPPED: dict[str, str] = {
    "bitnet": "its BitLinear layers run a Metal kernel only: no CPU path in mlx-lm",
    "olmo": "mlx-lm's module needs the ai2-olmo package (not a dependency of mlxd)",
    "phi3small": "mlx-lm's own generate_step crashes (SIGSEGV) in its blocksparse attention on "
    "MLX's CPU backend",
    "prism_hadamard_qwen35": "a 2-bit Hadamard-rotated quantized pack only (no float32 form to "
    "build); its text model is qwen3_5, which is tested",
    "muse_spark": "transformers validates its audio and vision configs against the text size "
    "(the tokenizer load reads config.json): a tiny text model needs tiny multimodal configs too",
}

# Families whose mlx-lm output depends on how a prompt is split into forward passes, so that no
# prefix reuse (in mlx-lm's own server either) can equal the uncached text: the engine test skips
# their prefix-cached follow-ups, saying why, and still checks them alone and batched.
SPLIT_DEPENDENT: dict[str, str] = {
    "plamo3": "mlx-lm's plamo3 masks one more key than its sliding window holds: generate over a "
    "prompt cache of the first 29 tokens differs from generate over all 33",
}


def family_config(family: str) -> dict[str, Any]:
    """The family's config.json: only the arguments its ModelArgs declares (transformers reads
    config.json too, for the tokenizer, and rejects some names its own config classes own),
    unless the family reads its arguments itself."""
    config = {"model_type": family, **_BASE, **FAMILIES.get(family, {})}
    if isinstance(config.get("text_config"), tuple):
        inner, extra = config["text_config"]
        config["text_config"] = {**family_config(inner), **extra}
    arguments = importlib.import_module(f"mlx_lm.models.{family}").ModelArgs
    own_reader = any("from_dict" in vars(k) for k in arguments.__mro__ if k is not BaseModelArgs)
    if not own_reader:
        declared = inspect.signature(arguments).parameters
        own = {"eos_token_id", *FAMILIES.get(family, {})}
        config = {k: v for k, v in config.items() if k in declared or k in own}
    return {k: v for k, v in config.items() if v is not _DROP}


def tiny_family(family: str, seed: int = 0) -> Any:
    """A random float32 model of `family` built by mlx-lm's own Model class."""
    module = importlib.import_module(f"mlx_lm.models.{family}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(family_config(family)))
    weights = dict(tree_flatten(model.parameters()))
    size = sum(int(w.size) for w in weights.values())
    if size > MAX_PARAMETERS:  # before anything is computed: a default-sized model is huge
        raise ValueError(f"{family}: {size:,} parameters with tiny arguments")
    model.update(tree_map(lambda a: a.astype(mx.float32), model.parameters()))
    head_name = next(
        (n for n, w in weights.items() if "lm_head" in n and w.ndim == 2 and w.shape[0] == VOCAB),
        None,
    )
    if head_name is None:  # tied: the embedding is the output layer too
        head_name = next(
            (n for n, w in weights.items() if w.ndim == 2 and w.shape[0] == VOCAB), None
        )
        # Larger layers, or the residual stream stays the input token's embedding and greedy
        # decoding only repeats the last prompt token (no test of anything).
        louder = [(n, w * TIED_LAYER_SCALE) for n, w in weights.items() if w.ndim >= 2]
        model.load_weights(louder, strict=False)
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


DOC = Path(__file__).parents[1] / "docs" / "families.md"
_DOC_HEAD = """# Model families

Every model module of mlx-lm 0.32.2 (`mlx_lm/models`), as mlxd serves it. Generated by
`python -m tests.families` from tests/families.py (tiny random float32 models of each family,
8-token sliding windows) and checked row by row against the loaded engine by
tests/engines/test_families.py: do not edit by hand.

- **caches**: each layer's cache kind (engines/llm/caches.py): `kv` grows with the tokens,
  `window` is a sliding window (bounded), `state` an SSM / linear-attention state (constant per
  row), `a+b` a CacheList of several, `other` a kind mlx-lm cannot batch.
- **served**: `batched` rows join and leave one continuous batch; `sequential` one sequence at a
  time behind the same queue (the reason is logged at load).
- **tested**: greedy output through the engine equals mlx-lm's `generate` on the same weights:
  each prompt alone, three prompts submitted together, and follow-up turns resumed from the prefix
  cache (alone, and two at once).

| family | caches | served | tested |
|---|---|---|---|
"""


def doc_row(family: str, kinds: list[str], sequential: str) -> str:
    """The family's row of docs/families.md, from what its caches are and how it is served."""
    if family in SKIPPED:
        return f"| {family} | - | - | skipped: {SKIPPED[family]} |"
    served = f"sequential: {sequential}" if sequential else "batched"
    tested = "alone, together, prefix follow-ups"
    if family in SPLIT_DEPENDENT:
        tested = f"alone, together; no follow-ups: {SPLIT_DEPENDENT[family]}"
    return f"| {family} | {', '.join(sorted(set(kinds)))} | {served} | {tested} |"


def render_doc() -> str:
    """docs/families.md, building every family's model (about a minute on a CPU)."""
    from mlx_lm.models.cache import make_prompt_cache

    from engines.llm.caches import CacheProfile

    rows = []
    for family in MODULES:
        if family in SKIPPED:
            rows.append(doc_row(family, [], ""))
            continue
        model = tiny_family(family)
        probe = make_prompt_cache(model)
        mx.eval(model(mx.array([list(range(16))]), cache=probe))
        profile = CacheProfile.of(probe, model)
        rows.append(doc_row(family, list(profile.kinds), profile.sequential_reason))
    return _DOC_HEAD + "\n".join(rows) + "\n"


if __name__ == "__main__":
    DOC.write_text(render_doc())
    print(f"wrote {DOC}")
