"""Write a random-weight MLX model of a real model's shape, for speed benchmarks only.

Used where no real weights can be fetched (the lent GPU machine reaches no registry). Shapes:
- `llama-1b` (default): Llama-3.2-1B (hidden 2048, 16 layers, 32/8 heads, FFN 8192, tied
  embeddings), with the tokenizer's vocabulary (SmolLM2's: 49,152), as in every earlier GPU run;
- `gemma3-1b`: Gemma-3-1B (mlx-lm's `gemma3_text`: hidden 1152, 26 layers, 4/1 heads of 256,
  FFN 6912, sliding window 512 on five layers of every six, tied embeddings, 262,144-row
  vocabulary), the sliding-window family of issue 21;
- `smol-gemma3`: the same family at SmolLM2-135M's size with its vocabulary, for CPU runs;
- `tiny-llama`, `tiny-gemma3`: the same families a few MB large, for smoke runs on a CPU
  (the tiny Gemma's window is 32, so it rotates within a short prompt).

The tokenizer is copied from an existing model directory. Embedding rows that the tokenizer
cannot produce (beyond its vocabulary, when the shape's is larger) and the end-of-sequence row
are zero: with tied embeddings their logits are 0, below the maximum of tens of thousands of
random logits, so greedy decoding never picks them — never stops early, never emits an id the
tokenizer cannot decode — and every run produces exactly the requested number of tokens.
Norm weights are set as trained models roughly have them (a scale of 1; Gemma stores 1 + w).

    python bench/random_model.py --tokenizer-from DIR --out DIR [--shape gemma3-1b]
        [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

blas.preload_from_env()

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

LLAMA_1B: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}

# Gemma-3-1B's text config as mlx-lm's gemma3_text.ModelArgs reads it (its defaults are this
# model's); the embeddings are tied because the saved weights hold no lm_head.
GEMMA3_1B: dict[str, Any] = {
    "model_type": "gemma3_text",
    "hidden_size": 1152,
    "num_hidden_layers": 26,
    "intermediate_size": 6912,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "max_position_embeddings": 32768,
    "vocab_size": 262144,
}

# SmolLM2-135M's size (hidden 576, 30 layers, 9/3 heads of 64, FFN 1536) as a Gemma-3 sliding-window
# model (window 512 on five layers of every six): issue 21's CPU benchmark shape.
SMOL_GEMMA3: dict[str, Any] = {
    **GEMMA3_1B,
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "query_pre_attn_scalar": 64,
    "max_position_embeddings": 8192,
    "vocab_size": 0,  # the tokenizer's (SmolLM2's 49,152)
}

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "head_dim": 16}

SHAPES: dict[str, dict[str, Any]] = {
    "llama-1b": LLAMA_1B,
    "gemma3-1b": GEMMA3_1B,
    "smol-gemma3": SMOL_GEMMA3,
    "tiny-llama": {**LLAMA_1B, **TINY, "num_hidden_layers": 2, "num_key_value_heads": 2},
    "tiny-gemma3": {
        **GEMMA3_1B,
        **TINY,
        "num_hidden_layers": 6,
        "query_pre_attn_scalar": 16,
        "sliding_window": 32,
        "vocab_size": 0,
    },
}

# Families whose RMSNorm scales by 1 + weight: a trained-like scale of 1 is a weight of 0.
OFFSET_NORM_FAMILIES = {"gemma3_text"}


def model_config(shape: str, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """The shape's config with a vocabulary at least the tokenizer's and its end-of-sequence id."""
    config = {**SHAPES[shape]}
    config["vocab_size"] = max(config.get("vocab_size", 0), tokenizer_config["vocab_size"])
    config["eos_token_id"] = tokenizer_config.get("eos_token_id")
    return config


def random_weights(config: dict[str, Any], tokenizer_vocab: int, dtype: Any) -> dict[str, Any]:
    """Every parameter of `config`'s mlx-lm model drawn from N(0, 0.02²), norms trained-like,
    unproducible and end-of-sequence embedding rows zero; a tied model saves no lm_head."""
    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    mx.random.seed(0)
    model = module.Model(module.ModelArgs.from_dict(config))
    norm_value = 0.0 if config["model_type"] in OFFSET_NORM_FAMILIES else 1.0
    weights: dict[str, Any] = {}
    for name, array in tree_flatten(model.parameters()):
        if name == "lm_head.weight":
            continue  # tied: the embedding serves as the output layer (gemma3's sanitize)
        if name.endswith("norm.weight"):
            weights[name] = mx.full(array.shape, norm_value, dtype=dtype)
        else:
            weights[name] = (0.02 * mx.random.normal(array.shape)).astype(dtype)
    embedding = weights["model.embed_tokens.weight"]
    embedding[tokenizer_vocab:] = 0
    eos = config["eos_token_id"]
    for token in eos if isinstance(eos, list) else [eos]:
        if token is not None:
            embedding[token] = 0
    mx.eval(weights)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-from", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", default="llama-1b", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()

    tokenizer_config = json.loads((args.tokenizer_from / "config.json").read_text())
    config = model_config(args.shape, tokenizer_config)
    weights = random_weights(config, tokenizer_config["vocab_size"], getattr(mx, args.dtype))
    args.out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(args.out / "model.safetensors"), weights)
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(args.tokenizer_from / name, args.out / name)
    parameters = sum(w.size for w in weights.values())
    print(f"wrote {args.out} ({args.shape}, {parameters / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
