#!/usr/bin/env bash
# All LLM benchmarks on a GPU machine with no model hub (the lent H100): builds a random-weight
# Llama-3.2-1B-shaped bf16 model around a carried tokenizer, then runs single-stream decode,
# the concurrency sweep and prefix reuse for mlxd and mlx_lm.server, and what new shapes cost
# (attention and matmuls with cuDNN attention on and off; first-token time per prompt length),
# writing JSON to $OUT.
#   bash bench/gpu_suite.sh TOKENIZER_DIR   (TOKENIZER_DIR: config.json, tokenizer.json,
#                                           tokenizer_config.json of e.g. SmolLM2)
set -euo pipefail
tokenizer_dir=${1:?usage: bench/gpu_suite.sh TOKENIZER_DIR}
out=${OUT:-bench/results}
model=${MODEL_DIR:-/tmp/mlxd-rand1b}
mkdir -p "$out"
[ -f "$model/model.safetensors" ] || python3 bench/random_model.py --tokenizer-from "$tokenizer_dir" --out "$model"
python3 bench/decode.py --model "$model" --runs 9 --tokens 256 --out "$out/decode.json"
python3 bench/concurrency.py --model "$model" --levels 1,4,8,16,32 --tokens 128 --out "$out/concurrency.json"
python3 bench/prefix.py --model "$model" --history-tokens 3000 --runs 3 --out "$out/prefix.json"
for cudnn in 0 1; do
  MLX_CUDA_USE_CUDNN_SDPA=$cudnn python3 bench/shape_costs.py --out "$out/shape_costs_cudnn$cudnn.json"
  MLX_CUDA_USE_CUDNN_SDPA=$cudnn python3 bench/ttft_shapes.py "$model" --out "$out/ttft_shapes_cudnn$cudnn.json"
done
