"""What an embedding checkpoint says about itself: architecture, pooling, normalisation, length.

Read from the Hugging Face / sentence-transformers layout, with no MLX and no network:
`config.json` (architecture), `modules.json` (a `Normalize` module → unit vectors),
`1_Pooling/config.json` (or whichever directory modules.json names for its `Pooling` module:
mean, cls, last-token or max pooling), `sentence_bert_config.json` (`max_seq_length`), and the
model card's tags (`matryoshka` → `dimensions` may truncate).

Invariant: `read_checkpoint` either returns a complete `Checkpoint` or raises `ValueError` saying
which file is missing or unusable; `is_embedding_checkpoint` never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Pooling = Literal["mean", "cls", "last", "max"]
Task = Literal["embed", "score"]  # vectors, or cross-encoder relevance logits

ENCODER_TYPES = frozenset({"bert", "xlm-roberta", "roberta", "modernbert"})
# Decoder families whose mlx-lm module we run for last-token embeddings (Qwen3-Embedding style).
DECODER_TYPES = frozenset({"qwen3", "qwen2", "llama"})
_ST_POOLING = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_max_tokens": "max",
}


@dataclass(frozen=True)
class Checkpoint:
    model_type: str
    task: Task
    pooling: Pooling
    normalize: bool
    max_tokens: int  # the longest input the model was trained for, special tokens included
    dimensions: int
    matryoshka: bool  # trained so that a prefix of the vector is itself an embedding
    num_labels: int = 0  # cross-encoders: outputs of the classification head

    @property
    def decoder(self) -> bool:
        return self.model_type in DECODER_TYPES


def _json(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict) and not isinstance(value, list):
        raise ValueError(f"{path}: not a JSON object")
    return value if isinstance(value, dict) else {"modules": value}


def _modules(path: Path) -> list[dict[str, Any]]:
    file = path / "modules.json"
    return list(_json(file)["modules"]) if file.exists() else []


def _pooling(path: Path, modules: list[dict[str, Any]], decoder: bool) -> Pooling:
    directory = next(
        (m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Pooling")),
        "1_Pooling",
    )
    file = path / directory / "config.json"
    if file.exists():
        config = _json(file)
        for key, mode in _ST_POOLING.items():
            if config.get(key):
                return mode  # type: ignore[return-value]
        raise ValueError(f"{file}: no pooling mode mlxd knows (mean, cls, lasttoken, max)")
    return "last" if decoder else "cls"


def _matryoshka(path: Path) -> bool:
    """The model card's front matter lists a `matryoshka` tag (how the Hub marks MRL models)."""
    card = path / "README.md"
    if not card.exists():
        return False
    front = card.read_text(encoding="utf-8", errors="replace").split("---")
    return len(front) > 2 and re.search(r"^\s*-\s*matryoshka\s*$", front[1], re.M) is not None


def read_checkpoint(path: Path) -> Checkpoint:
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"{path}: no config.json")
    config = _json(config_file)
    model_type = str(config.get("model_type", ""))
    if model_type not in ENCODER_TYPES | DECODER_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is not an embedding model mlxd runs")
    architectures = [str(a) for a in config.get("architectures") or []]
    score = any(a.endswith("ForSequenceClassification") for a in architectures)
    modules = _modules(path)
    decoder = model_type in DECODER_TYPES
    st_config = path / "sentence_bert_config.json"
    positions = int(config.get("max_position_embeddings", 512))
    if model_type in ("xlm-roberta", "roberta"):
        positions -= int(config.get("pad_token_id", 1)) + 1  # positions start after padding_idx
    max_tokens = positions
    if st_config.exists():
        max_tokens = int(_json(st_config).get("max_seq_length") or positions)
    return Checkpoint(
        model_type=model_type,
        task="score" if score else "embed",
        pooling="cls" if score else _pooling(path, modules, decoder),
        normalize=not score and any(str(m.get("type", "")).endswith(".Normalize") for m in modules),
        max_tokens=min(max_tokens, positions),
        dimensions=int(config["hidden_size"]),
        matryoshka=_matryoshka(path),
        num_labels=(len(config.get("id2label") or {}) or 1) if score else 0,
    )


def is_embedding_checkpoint(path: Path) -> bool:
    """Whether `path` holds a model the embedding kind serves: an encoder (BERT-like), a
    cross-encoder, or a decoder that a sentence-transformers `modules.json` marks as an
    embedder. A plain chat LLM (no modules.json) is not one."""
    try:
        checkpoint = read_checkpoint(path)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return not checkpoint.decoder or bool(_modules(path))
