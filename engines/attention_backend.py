"""Which attention kernels MLX uses in this process, chosen before the first MLX call.

On CUDA, MLX runs multi-token attention (prefill) through cuDNN, which builds a graph for every
new (batch, query length, key length) shape and caches it: 55-80 ms per new shape on an H200,
against 0.6-8 ms for MLX's shape-generic attention (matmul, softmax, matmul) on a new shape
(bench/shape_costs.py, docs/benchmarks.md). A server meets a new shape on almost every request:
every prompt, every cached history and every batch of arrivals has its own length, so with
cuDNN each first token paid a graph build. mlxd therefore turns cuDNN attention off unless the
user has set MLX_CUDA_USE_CUDNN_SDPA themselves.

Invariant: `prefer_shape_generic_attention()` runs before the process's first attention call
(MLX reads the variable once). Only MLX's CUDA backend reads it: on Metal and CPU it changes
nothing.
"""

from __future__ import annotations

import os

CUDNN_ATTENTION_VARIABLE = "MLX_CUDA_USE_CUDNN_SDPA"


def prefer_shape_generic_attention() -> str:
    """Default MLX's CUDA attention to the shape-generic kernels; return the value in effect."""
    return os.environ.setdefault(CUDNN_ATTENTION_VARIABLE, "0")
