"""Decoder embedders (Qwen3-Embedding style): an mlx-lm transformer body, last-token pooled.

The body is mlx-lm's own model class for the checkpoint's `model_type` (its `.model`: embeddings,
layers, final norm; no LM head). Rows are left-padded and run through a `BatchKVCache` that knows
each row's padding, exactly as the chat engine's batched prefill does, so every row's last
position is its last real token and padding changes nothing it attends to.

Invariant: weights load strictly into the body (a missing tensor is an error); checkpoints saved
as a bare body (`layers.0…`, as Qwen3-Embedding ships) and as a causal LM (`model.layers.0…`)
both load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn


def load_decoder(path: Path, config: dict[str, Any]) -> nn.Module:
    from mlx_lm.utils import _get_classes

    from engines.weights.checkpoint import dequantized_weights

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    weights: dict[str, mx.array] = {}
    for file in sorted(path.glob("*.safetensors")):
        weights.update(mx.load(str(file)))  # type: ignore[arg-type]
    weights = dequantized_weights(weights, config)  # a GGUF import for CPU: float32 triples
    weights = {
        name if name.startswith(("model.", "lm_head.")) else f"model.{name}": value
        for name, value in weights.items()
    }
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    body = {name[len("model.") :]: v for name, v in weights.items() if name.startswith("model.")}
    model.model.load_weights(list(body.items()), strict=True)
    mx.eval(model.model.parameters())
    body_module: nn.Module = model.model
    return body_module


def last_token_states(body: nn.Module, rows: list[list[int]], width: int, pad_id: int) -> mx.array:
    """The final hidden state of each row's last token: (rows, hidden)."""
    from mlx_lm.models.cache import BatchKVCache

    padding = [width - len(row) for row in rows]
    ids = mx.array([[pad_id] * pad + row for pad, row in zip(padding, rows, strict=True)])
    cache = [BatchKVCache(list(padding)) for _ in body.layers]
    hidden: mx.array = body(ids, cache=cache)
    return hidden[:, -1]
