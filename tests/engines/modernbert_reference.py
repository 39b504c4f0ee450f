"""A tiny random ModernBERT and the reference outputs of `transformers`' own implementation on
it, for tests/engines/test_embed_engine.py (torch is not in the project's environment, so the
numbers are made once, outside it, and checked in as tests/engines/data/modernbert_tiny.json).

The weights come from `tiny_weights()` (numpy, seeded): the test rebuilds the same checkpoint
without torch. Regenerate the numbers with a throwaway environment:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors numpy
    PYTHONPATH=. /tmp/refvenv/bin/python tests/engines/modernbert_reference.py

The config alternates attention (layers 0 and 2 global, layer 1 local) with a window of ±2
tokens, so inputs of up to 11 tokens reach past it; the rotary bases differ per kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CONFIG: dict[str, Any] = {
    "model_type": "modernbert",
    "architectures": ["ModernBertForSequenceClassification"],
    "vocab_size": 24,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "global_attn_every_n_layers": 2,
    "local_attention": 4,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
    "max_position_embeddings": 64,
    "norm_eps": 1e-5,
    "norm_bias": False,
    "attention_bias": False,
    "mlp_bias": False,
    "classifier_bias": False,
    "classifier_pooling": "mean",
    "hidden_activation": "gelu",
    "classifier_activation": "gelu",
    "pad_token_id": 0,
    "cls_token_id": 2,
    "sep_token_id": 3,
    "bos_token_id": 2,
    "eos_token_id": 3,
    "num_labels": 1,
    "id2label": {"0": "LABEL_0"},
}
# Token ids (a CLS of 2 and SEP of 3 around them): lengths 11, 5 and 3.
INPUTS = [
    [2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 3],
    [2, 13, 4, 14, 3],
    [2, 15, 3],
]
DATA = Path(__file__).parent / "data" / "modernbert_tiny.json"


def tiny_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The sequence-classification checkpoint's tensors (`model.*`, `head.*`, `classifier.*`)."""
    rng = np.random.default_rng(seed)
    hidden, inner = CONFIG["hidden_size"], CONFIG["intermediate_size"]

    def normal(scale: float, *shape: int) -> np.ndarray:
        return rng.normal(0, scale, shape).astype(np.float32)

    weights = {
        "model.embeddings.tok_embeddings.weight": normal(1.0, CONFIG["vocab_size"], hidden),
        "model.embeddings.norm.weight": 1 + normal(0.1, hidden),
        "model.final_norm.weight": 1 + normal(0.1, hidden),
        "head.dense.weight": normal(0.3, hidden, hidden),
        "head.norm.weight": 1 + normal(0.1, hidden),
        "classifier.weight": normal(0.3, 1, hidden),
        "classifier.bias": normal(0.1, 1),
    }
    for i in range(CONFIG["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        if i:
            weights[f"{layer}.attn_norm.weight"] = 1 + normal(0.1, hidden)
        weights[f"{layer}.attn.Wqkv.weight"] = normal(0.3, 3 * hidden, hidden)
        weights[f"{layer}.attn.Wo.weight"] = normal(0.3, hidden, hidden)
        weights[f"{layer}.mlp_norm.weight"] = 1 + normal(0.1, hidden)
        weights[f"{layer}.mlp.Wi.weight"] = normal(0.3, 2 * inner, hidden)
        weights[f"{layer}.mlp.Wo.weight"] = normal(0.3, hidden, inner)
    return weights


def main() -> None:
    import torch
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    config = ModernBertConfig(**{k: v for k, v in CONFIG.items() if k != "model_type"})
    model = ModernBertForSequenceClassification(config).eval()
    state = {name: torch.from_numpy(value) for name, value in tiny_weights().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in name for name in missing), (missing, unexpected)
    hidden, logits, window_matters = [], [], []
    with torch.no_grad():
        for ids in INPUTS:
            states = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            hidden.append(states.tolist())
            logits.append(model(input_ids=torch.tensor([ids])).logits[0].tolist())
        # The same input with the window as wide as the input: the local layer must matter.
        config.local_attention = 64
        wide = ModernBertForSequenceClassification(config).eval()
        wide.load_state_dict(state, strict=False)
        states = wide.model(input_ids=torch.tensor([INPUTS[0]])).last_hidden_state[0]
        window_matters.append(float((states - torch.tensor(hidden[0])).abs().max()))
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(
        json.dumps(
            {
                "made_with": f"torch {torch.__version__}, transformers "
                + __import__("transformers").__version__,
                "hidden": hidden,
                "logits": logits,
                "window_changes_output_by": window_matters[0],
            }
        )
        + "\n"
    )
    print(f"wrote {DATA}")


if __name__ == "__main__":
    main()
