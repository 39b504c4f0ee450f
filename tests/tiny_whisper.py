"""A tiny random whisper written in CTranslate2's `model.bin` format, for importer and engine
tests without the real model: the same reader, converter and engine code paths, in a second.

The vocabulary is GPT-2's 256 byte tokens, the special tokens the engine looks up by name and
the 1,501 timestamp tokens, laid out like an English-only whisper's.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from engines.byte_level import gpt2_byte_decoder

SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|de|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
TIMESTAMPS = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]


def vocabulary() -> list[str]:
    return (
        sorted(gpt2_byte_decoder(), key=lambda ch: gpt2_byte_decoder()[ch]) + SPECIALS + TIMESTAMPS
    )


def _string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def _variable(name: str, array: np.ndarray) -> bytes:
    dtype_id = {np.dtype(np.float32): 0, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    header = _string(name) + struct.pack("<B", array.ndim)
    header += struct.pack("<" + "I" * array.ndim, *array.shape)
    raw = np.ascontiguousarray(array).tobytes()
    return header + struct.pack("<BI", dtype_id[array.dtype], len(raw)) + raw


def write_tiny_ct2(directory: Path, state: int = 32, heads: int = 2, text_ctx: int = 64) -> Path:
    """Write model.bin, config.json, vocabulary.txt and tokenizer.json; return `directory`."""
    rng = np.random.default_rng(0)
    vocab = vocabulary()

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float16)

    def block(prefix: str, cross: bool) -> dict[str, np.ndarray]:
        out = {
            f"{prefix}/self_attention/linear_0/weight": weight(3 * state, state),
            f"{prefix}/self_attention/linear_0/bias": weight(3 * state),
            f"{prefix}/self_attention/linear_1/weight": weight(state, state),
            f"{prefix}/self_attention/linear_1/bias": weight(state),
            f"{prefix}/self_attention/layer_norm/gamma": np.ones(state, np.float16),
            f"{prefix}/self_attention/layer_norm/beta": weight(state),
            f"{prefix}/ffn/linear_0/weight": weight(4 * state, state),
            f"{prefix}/ffn/linear_0/bias": weight(4 * state),
            f"{prefix}/ffn/linear_1/weight": weight(state, 4 * state),
            f"{prefix}/ffn/linear_1/bias": weight(state),
            f"{prefix}/ffn/layer_norm/gamma": np.ones(state, np.float16),
            f"{prefix}/ffn/layer_norm/beta": weight(state),
        }
        if cross:
            out |= {
                f"{prefix}/attention/linear_0/weight": weight(state, state),
                f"{prefix}/attention/linear_0/bias": weight(state),
                f"{prefix}/attention/linear_1/weight": weight(2 * state, state),
                f"{prefix}/attention/linear_1/bias": weight(2 * state),
                f"{prefix}/attention/linear_2/weight": weight(state, state),
                f"{prefix}/attention/linear_2/bias": weight(state),
                f"{prefix}/attention/layer_norm/gamma": np.ones(state, np.float16),
                f"{prefix}/attention/layer_norm/beta": weight(state),
            }
        return out

    variables = {
        "encoder/num_heads": np.array(heads, np.int16),
        "encoder/conv1/weight": weight(state, 80, 3),
        "encoder/conv1/bias": weight(state),
        "encoder/conv2/weight": weight(state, state, 3),
        "encoder/conv2/bias": weight(state),
        "encoder/position_encodings/encodings": weight(1500, state),
        "encoder/layer_norm/gamma": np.ones(state, np.float16),
        "encoder/layer_norm/beta": weight(state),
        **block("encoder/layer_0", cross=False),
        "decoder/num_heads": np.array(heads, np.int16),
        "decoder/embeddings/weight": weight(len(vocab), state),
        "decoder/position_encodings/encodings": weight(text_ctx, state),
        "decoder/layer_norm/gamma": np.ones(state, np.float16),
        "decoder/layer_norm/beta": weight(state),
        **block("decoder/layer_0", cross=True),
    }
    directory.mkdir(parents=True, exist_ok=True)
    blob = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    blob += b"".join(_variable(name, value) for name, value in variables.items())
    blob += struct.pack("<I", 1) + _string("decoder/projection/weight")
    blob += _string("decoder/embeddings/weight")
    (directory / "model.bin").write_bytes(blob)
    special_ids = [vocab.index(token) for token in SPECIALS[1:]]
    config = {"alignment_heads": [[0, 0]], "suppress_ids": special_ids, "suppress_ids_begin": []}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "vocabulary.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory
