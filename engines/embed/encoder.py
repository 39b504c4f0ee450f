"""BERT and XLM-RoBERTa encoders in MLX, with the parameter names of Hugging Face's checkpoints
(ModernBERT is in modernbert.py; `load_encoder` loads all three).

The modules mirror `transformers`' BertModel layout (`embeddings.*`, `encoder.layer.N.*`), so a
checkpoint's safetensors load as they are once the task prefix (`bert.`, `roberta.`) is dropped.
A cross-encoder (`*ForSequenceClassification`) adds its head: BERT's pooler + `classifier`, or
RoBERTa's `classifier.dense` + `classifier.out_proj`, both on the first token.

Invariants: inputs are right-padded; `mask` is 1 on real tokens and 0 on padding, and padding
never changes a real token's output (attention adds a large negative to padded keys). XLM-R's
positions start after its padding index, as in transformers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

_NEG = -1e9  # added to attention scores of padded keys (finite: a fully padded row stays finite)
# Abramowitz & Stegun 7.1.28: erf(z) = 1 - (1 + a1 z + … + a6 z^6)^-16 for z >= 0, |error| < 3e-7.
_ERF_A = (0.0705230784, 0.0422820123, 0.0092705272, 0.0001520143, 0.0002765672, 0.0000430638)


def polynomial_gelu(x: mx.array) -> mx.array:
    """BERT's exact (erf) GELU to within 1e-6, from multiplications and one division: MLX's CPU
    `erf` is scalar, and this is faster there (the encoder's largest elementwise cost;
    docs/benchmarks.md, "Measurements behind the code")."""
    z = mx.abs(x) * (1 / math.sqrt(2))
    a1, a2, a3, a4, a5, a6 = _ERF_A
    p = 1 + z * (a1 + z * (a2 + z * (a3 + z * (a4 + z * (a5 + z * a6)))))
    for _ in range(4):
        p = p * p  # ^16
    erf = 1 - 1 / p
    return 0.5 * x * (1 + mx.where(x < 0, -erf, erf))


class Embeddings(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(config.get("type_vocab_size", 2), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.get("layer_norm_eps", 1e-12))
        roberta = config["model_type"] in ("xlm-roberta", "roberta")
        self.position_offset = int(config.get("pad_token_id", 1)) + 1 if roberta else 0

    def __call__(self, ids: mx.array, types: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1]) + self.position_offset
        h = self.word_embeddings(ids) + self.position_embeddings(positions)[None]
        return self.LayerNorm(h + self.token_type_embeddings(types))


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def __call__(self, h: mx.array, bias: mx.array) -> mx.array:
        batch, length, hidden = h.shape

        def split(x: mx.array) -> mx.array:
            return x.reshape(batch, length, self.heads, -1).transpose(0, 2, 1, 3)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scale = (hidden // self.heads) ** -0.5
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=bias)
        return out.transpose(0, 2, 1, 3).reshape(batch, length, hidden)


class DenseNorm(nn.Module):
    """`dense` then LayerNorm of (output + residual): BERT's `*.output` blocks."""

    def __init__(self, d_in: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = SelfAttention(hidden, heads)
        self.output = DenseNorm(hidden, hidden, eps)

    def __call__(self, h: mx.array, bias: mx.array) -> mx.array:
        return self.output(self.self(h, bias), h)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inner)
        # BERT's "gelu" is the exact (erf) one.
        self.activation = polynomial_gelu if mx.default_device() == mx.cpu else nn.gelu

    def __call__(self, h: mx.array) -> mx.array:
        return self.activation(self.dense(h))


class Layer(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        self.attention = Attention(hidden, config["num_attention_heads"], eps)
        self.intermediate = Intermediate(hidden, config["intermediate_size"])
        self.output = DenseNorm(config["intermediate_size"], hidden, eps)

    def __call__(self, h: mx.array, bias: mx.array) -> mx.array:
        h = self.attention(h, bias)
        return self.output(self.intermediate(h), h)


class Encoder(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.layer = [Layer(config) for _ in range(config["num_hidden_layers"])]


class Pooler(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)


class RobertaHead(nn.Module):
    def __init__(self, hidden: int, labels: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, labels)


class EncoderModel(nn.Module):
    """`__call__` gives the last hidden states; `score` the classification head's logits."""

    def __init__(self, config: dict[str, Any], num_labels: int = 0) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        hidden = config["hidden_size"]
        self.roberta = config["model_type"] in ("xlm-roberta", "roberta")
        if num_labels and self.roberta:
            self.classifier: Any = RobertaHead(hidden, num_labels)
        elif num_labels:
            self.pooler = Pooler(hidden)
            self.classifier = nn.Linear(hidden, num_labels)

    def __call__(self, ids: mx.array, types: mx.array, mask: mx.array) -> mx.array:
        bias = ((1 - mask.astype(mx.float32)) * _NEG)[:, None, None, :]
        h = self.embeddings(ids, types)
        for layer in self.encoder.layer:
            h = layer(h, bias.astype(h.dtype))
        return h

    def score(self, hidden: mx.array, mask: mx.array) -> mx.array:
        """The head's logits from the first token (`mask`: ModernBERT's head may pool over
        it; BERT's never does)."""
        first = hidden[:, 0]
        if self.roberta:
            return self.classifier.out_proj(mx.tanh(self.classifier.dense(first)))
        return self.classifier(mx.tanh(self.pooler.dense(first)))


def load_encoder(path: Path, config: dict[str, Any], num_labels: int) -> Any:
    """The encoder (and head, for cross-encoders) with the checkpoint's weights, strictly: a
    missing or unexpected tensor is an error, never a silently random weight. Heads the
    embedding does not use are dropped: BERT's pooler, a masked-LM checkpoint's `head` and
    `decoder` (ModernBERT)."""
    weights: dict[str, mx.array] = {}
    for file in sorted(path.glob("*.safetensors")):
        weights.update(mx.load(str(file)))  # type: ignore[arg-type]
    renamed = {}
    for name, value in weights.items():
        for prefix in ("bert.", "roberta.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        unused = ("pooler.", "head.", "decoder.")
        if name.endswith("position_ids") or (not num_labels and name.startswith(unused)):
            continue  # a buffer, and heads that embeddings do not use
        renamed[name] = value
    model: Any
    if config["model_type"] == "modernbert":
        from engines.embed.modernbert import ModernBertModel

        model = ModernBertModel(config, num_labels)
    else:
        model = EncoderModel(config, num_labels)
    model.load_weights(list(renamed.items()), strict=True)
    mx.eval(model.parameters())
    return model
