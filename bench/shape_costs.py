"""What a never-seen shape costs on this device: one attention call (cuDNN-eligible causal, bool
array mask, single-query) and one matmul, timed the first time a shape is met and again. On CUDA
MLX builds a cuDNN graph per attention shape and plans matmuls per shape; compare with
MLX_CUDA_USE_CUDNN_SDPA=0 (MLX's shape-generic attention).

    python bench/shape_costs.py [--out FILE]          (prints "what shape ms" lines too)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

blas.preload_from_env()

import mlx.core as mx  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 64  # Llama-3.2-1B's attention
ATTENTION = [  # (query length, key length, mask): a repeat follows each first use
    (100, 3100, "causal"),
    (100, 3100, "causal"),
    (101, 3101, "causal"),
    (101, 3101, "causal"),
    (37, 3137, "causal"),
    (128, 3072, "array"),
    (128, 3072, "array"),
    (128, 3328, "array"),
    (128, 3328, "array"),
    (1, 3000, "none"),
    (1, 3001, "none"),
    (1, 3001, "none"),
]
MATMUL_ROWS = [100, 100, 101, 101, 3000, 3001, 3001, 128, 256]  # (rows × 2048) @ (2048 × 8192)


def milliseconds(compute: Callable[[], mx.array]) -> float:
    mx.synchronize()
    start = time.perf_counter()
    mx.eval(compute())
    mx.synchronize()
    return (time.perf_counter() - start) * 1000


def attention(query_length: int, key_length: int, mask_kind: str) -> float:
    def normal(heads: int, length: int) -> mx.array:
        return mx.random.normal((1, heads, length, HEAD_DIM)).astype(mx.bfloat16)

    q, k, v = (
        normal(HEADS, query_length),
        normal(KV_HEADS, key_length),
        normal(KV_HEADS, key_length),
    )
    mask: str | mx.array | None = None if mask_kind == "none" else mask_kind
    if mask_kind == "array":
        rows = mx.arange(query_length)[:, None] + key_length - query_length
        mask = (mx.arange(key_length)[None] <= rows)[None, None]
    mx.eval(q, k, v, *([mask] if isinstance(mask, mx.array) else []))
    return milliseconds(
        lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask)
    )


def matmul(count: int) -> float:
    x = mx.random.normal((count, 2048)).astype(mx.bfloat16)
    weight = mx.random.normal((2048, 8192)).astype(mx.bfloat16)
    mx.eval(x, weight)
    return milliseconds(lambda: x @ weight)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/shape_costs.json"))
    args = parser.parse_args()
    rows = []
    for query_length, key_length, mask_kind in ATTENTION:
        shape = f"q{query_length} k{key_length} {mask_kind}"
        ms = attention(query_length, key_length, mask_kind)
        rows.append({"what": "attention", "shape": shape, "ms": ms})
    for count in MATMUL_ROWS:
        rows.append({"what": "matmul", "shape": f"{count}x2048", "ms": matmul(count)})
    for row in rows:
        print(row["what"], row["shape"], f"{row['ms']:.2f}", flush=True)
    report = {
        "device": str(mx.default_device()),
        "MLX_CUDA_USE_CUDNN_SDPA": os.environ.get("MLX_CUDA_USE_CUDNN_SDPA"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
