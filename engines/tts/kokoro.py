"""Kokoro-82M on MLX (mlx-audio's `mlx_audio.tts.models.kokoro.Model`) loaded from a store entry
(engines/weights/kokoro.py), with our offline phonemizer and the entry's voices.

Invariants: built and called only on the engine thread (it holds MLX arrays); `synthesise`
returns plain numpy samples. A reading is one forward pass, so it holds at most `MAX_PHONEMES`
phonemes (Kokoro's 512 positions less the two boundary tokens): `readings` cuts a piece that
reads longer into parts that fit (engines/tts/text.py), all of which are spoken. Kokoro's
source module draws noise from MLX's default generator: it is seeded with `NOISE_SEED` before
every reading, so the same text, voice and speed always give the same samples. MLX's default
generator is per thread (as of mlx 0.32), so this touches only the engine thread's own draws (a
test checks it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np

from engines.tts.phonemes import phonemize
from engines.tts.text import readings

MAX_PHONEMES = 510
NOISE_SEED = 0


class Kokoro:
    def __init__(self, path: Path) -> None:
        import mlx.core as mx
        from mlx_audio.tts.models.kokoro import Model, ModelConfig

        config = json.loads((path / "config.json").read_text())
        meta = json.loads((path / "mlxd.json").read_text())
        self.model = Model(ModelConfig.from_dict(config))
        weights = cast(dict[str, Any], mx.load(str(path / "model.safetensors")))
        self.model.load_weights(list(weights.items()), strict=True)
        self.model.eval()
        if mx.default_device() == mx.cpu:  # cpu_conv.py says why
            from engines.tts.cpu_conv import use_gathered_convs

            use_gathered_convs(self.model)
        voices = cast(dict[str, Any], mx.load(str(path / "voices.safetensors")))
        self.voices = {name: np.array(table, np.float32) for name, table in voices.items()}
        self.vocab: dict[str, int] = config["vocab"]
        self.sample_rate = int(meta.get("sample_rate", 24000))
        self.default_voice = str(meta.get("default_voice") or sorted(self.voices)[0])
        self.weights_bytes = sum(int(array.nbytes) for array in weights.values())

    def phonemes(self, text: str) -> str:
        """The phonemes Kokoro reads for `text` (symbols outside its vocabulary dropped)."""
        return "".join(symbol for symbol in phonemize(text) if symbol in self.vocab)

    def readings(self, piece: str) -> list[tuple[str, str]]:
        """`piece` as (text, phonemes) parts of at most `MAX_PHONEMES` phonemes, in order."""
        return readings(piece, self.phonemes, MAX_PHONEMES)

    def synthesise(self, phonemes: str, voice: str, speed: float) -> tuple[np.ndarray, int]:
        """(float32 samples at `sample_rate`, phoneme tokens read) for one reading."""
        import mlx.core as mx

        assert len(phonemes) <= MAX_PHONEMES, "readings() keeps every part within the limit"
        if not phonemes.strip():
            return np.zeros(0, np.float32), 0
        # (1, 256): the row for its length, as mlx-audio's KPipeline takes it (pack[n - 1]); a
        # voice has MAX_PHONEMES rows, so row n would be past a reading of the limit's length
        style = mx.array(self.voices[voice][len(phonemes) - 1])
        mx.random.seed(NOISE_SEED)
        audio = self.model(phonemes, style, speed)
        return np.array(audio, np.float32).reshape(-1), len(phonemes)
