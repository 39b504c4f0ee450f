"""Write a random-weight MLX model of a real model's shape, for speed benchmarks only.

Used where no real weights can be fetched (the lent GPU machine reaches no registry): a
Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32/8 heads, FFN 8192, tied embeddings) with a
real tokenizer copied from an existing model directory (its vocabulary sets `vocab_size`). The
end-of-sequence embedding row is zero, so greedy decoding never stops early and every run produces
exactly the requested number of tokens.

    python bench/random_model.py --tokenizer-from DIR --out DIR [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

blas.preload_from_env()

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten, tree_map  # noqa: E402
from mlx_lm.models.llama import Model, ModelArgs  # noqa: E402

LLAMA_1B = {
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-from", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()

    source_config = json.loads((args.tokenizer_from / "config.json").read_text())
    config = {
        **LLAMA_1B,
        "vocab_size": source_config["vocab_size"],
        "eos_token_id": source_config.get("eos_token_id"),
    }
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict(config))
    dtype = getattr(mx, args.dtype)
    model.update(
        tree_map(lambda w: (0.02 * mx.random.normal(w.shape)).astype(dtype), model.parameters())
    )
    for layer in model.model.layers:  # norms at 1, as trained models roughly have them
        layer.input_layernorm.weight = mx.ones_like(layer.input_layernorm.weight)
        layer.post_attention_layernorm.weight = mx.ones_like(layer.post_attention_layernorm.weight)
    model.model.norm.weight = mx.ones_like(model.model.norm.weight)
    if config["eos_token_id"] is not None:
        model.model.embed_tokens.weight[config["eos_token_id"]] = 0
    args.out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(args.out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(args.tokenizer_from / name, args.out / name)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
