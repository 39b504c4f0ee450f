"""ModernBERT in MLX, with the parameter names of Hugging Face's checkpoints (`transformers`'
ModernBertModel / ModernBertForSequenceClassification, the reference this mirrors).

What differs from BERT (encoder.py): token embeddings only (positions are rotary), pre-norm
layers (the first layer's attention takes its input unnormalised), one fused `Wqkv`, a GeGLU
MLP (`Wi` makes input and gate, `act(input) * gate`), a final norm, no biases unless the config
asks (`attention_bias`, `mlp_bias`, `norm_bias`, `classifier_bias`), and attention that
alternates: every `global_attn_every_n_layers`-th layer (from layer 0) attends to the whole
input with rotary base `global_rope_theta`, the others to tokens at most `local_attention // 2`
away with base `local_rope_theta` (or the config's `layer_types` / `rope_parameters`, as
transformers 5 writes them).

Invariants: inputs are right-padded, `mask` is 1 on real tokens, and padding never changes a
real token's output (padded keys get a large negative); `score` pools as the config says
(`classifier_pooling`: the first token, or the mean over real tokens) before the head.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engines.embed.encoder import polynomial_gelu

_NEG = -1e9  # finite: a fully padded row stays finite


def _activation(name: str) -> Any:
    if name == "gelu":  # the exact (erf) one
        return polynomial_gelu if mx.default_device() == mx.cpu else nn.gelu
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return nn.gelu_approx
    if name == "silu":
        return nn.silu
    raise ValueError(f"ModernBERT activation {name!r} is not one mlxd runs")


def layer_kinds(config: dict[str, Any]) -> list[str]:
    """Per layer, "full_attention" or "sliding_attention"."""
    kinds = config.get("layer_types")
    if kinds:
        return [str(kind) for kind in kinds]
    every = int(config.get("global_attn_every_n_layers", 3))
    layers = int(config["num_hidden_layers"])
    return ["sliding_attention" if i % every else "full_attention" for i in range(layers)]


def _rope_theta(config: dict[str, Any], kind: str) -> float:
    parameters = (config.get("rope_parameters") or {}).get(kind) or {}
    if "rope_theta" in parameters:
        return float(parameters["rope_theta"])
    if kind == "full_attention":
        return float(config.get("global_rope_theta", 160_000.0))
    return float(config.get("local_rope_theta", 10_000.0))


class Embeddings(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.tok_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.norm = _norm(config)

    def __call__(self, ids: mx.array) -> mx.array:
        return self.norm(self.tok_embeddings(ids))


def _norm(config: dict[str, Any]) -> nn.LayerNorm:
    return nn.LayerNorm(
        config["hidden_size"],
        eps=config.get("norm_eps", 1e-5),
        bias=bool(config.get("norm_bias", False)),
    )


class Attention(nn.Module):
    def __init__(self, config: dict[str, Any], kind: str) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.head_dim = hidden // self.heads
        bias = bool(config.get("attention_bias", False))
        self.Wqkv = nn.Linear(hidden, 3 * hidden, bias=bias)
        self.Wo = nn.Linear(hidden, hidden, bias=bias)
        self.rope = nn.RoPE(self.head_dim, traditional=False, base=_rope_theta(config, kind))

    def __call__(self, h: mx.array, bias: mx.array) -> mx.array:
        batch, length, hidden = h.shape
        # transformers' layout: (batch, length, 3, heads, head_dim)
        qkv = self.Wqkv(h).reshape(batch, length, 3, self.heads, self.head_dim)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        q, k = self.rope(q), self.rope(k)
        scale = self.head_dim**-0.5
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=bias)
        return self.Wo(out.transpose(0, 2, 1, 3).reshape(batch, length, hidden))


class MLP(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden, inner = config["hidden_size"], config["intermediate_size"]
        bias = bool(config.get("mlp_bias", False))
        self.Wi = nn.Linear(hidden, 2 * inner, bias=bias)
        self.Wo = nn.Linear(inner, hidden, bias=bias)
        self.act = _activation(config.get("hidden_activation", "gelu"))

    def __call__(self, h: mx.array) -> mx.array:
        x, gate = mx.split(self.Wi(h), 2, axis=-1)
        return self.Wo(self.act(x) * gate)


class Layer(nn.Module):
    def __init__(self, config: dict[str, Any], index: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if index:  # layer 0 reads the embeddings' (already normalised) output as it is
            self.attn_norm = _norm(config)
        self.attn = Attention(config, kind)
        self.mlp_norm = _norm(config)
        self.mlp = MLP(config)

    def __call__(self, h: mx.array, bias: mx.array) -> mx.array:
        normed = self.attn_norm(h) if "attn_norm" in self else h
        h = h + self.attn(normed, bias)
        return h + self.mlp(self.mlp_norm(h))


class PredictionHead(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.dense = nn.Linear(hidden, hidden, bias=bool(config.get("classifier_bias", False)))
        self.act = _activation(config.get("classifier_activation", "gelu"))
        self.norm = _norm(config)

    def __call__(self, x: mx.array) -> mx.array:
        return self.norm(self.act(self.dense(x)))


class ModernBertModel(nn.Module):
    """`__call__(ids, types, mask)` gives the last hidden states (after the final norm; `types`
    is ignored: ModernBERT has no segment embeddings); `score` the classifier's logits."""

    def __init__(self, config: dict[str, Any], num_labels: int = 0) -> None:
        super().__init__()
        kinds = layer_kinds(config)
        self.embeddings = Embeddings(config)
        self.layers = [Layer(config, i, kind) for i, kind in enumerate(kinds)]
        self.final_norm = _norm(config)
        self.window = int(config.get("local_attention", 128)) // 2
        self.pooling = str(config.get("classifier_pooling", "cls"))
        if num_labels:
            self.head = PredictionHead(config)
            self.classifier = nn.Linear(config["hidden_size"], num_labels)

    def __call__(self, ids: mx.array, types: mx.array, mask: mx.array) -> mx.array:
        h = self.embeddings(ids)
        padding = ((1 - mask.astype(mx.float32)) * _NEG)[:, None, None, :]
        positions = mx.arange(ids.shape[1])
        far = mx.abs(positions[:, None] - positions[None, :]) > self.window
        biases = {
            "full_attention": padding.astype(h.dtype),
            "sliding_attention": (padding + mx.where(far, _NEG, 0.0)).astype(h.dtype),
        }
        for layer in self.layers:
            h = layer(h, biases[layer.kind])
        return self.final_norm(h)

    def score(self, hidden: mx.array, mask: mx.array) -> mx.array:
        if self.pooling == "mean":
            weights = mask[..., None].astype(hidden.dtype)
            pooled = (hidden * weights).sum(axis=1) / mx.maximum(weights.sum(axis=1), 1)
        else:
            pooled = hidden[:, 0]
        return self.classifier(self.head(pooled))
