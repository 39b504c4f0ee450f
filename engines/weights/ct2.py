"""Import a CTranslate2 whisper model (`model.bin` + vocabulary) into the store as MLX weights.

The store entry is laid out so that both mlxd and mlx-whisper can load it:
- `config.json`: whisper's ModelDimensions only (mlx-whisper builds its model from it);
- `weights.safetensors`: float32 tensors under whisper's own names (`encoder.blocks.0.attn.query`…),
  conv kernels in MLX layout (out, kernel, in);
- `mlxd.json`: what mlxd needs besides (kind, alignment heads, suppressed tokens);
- `vocabulary.txt` (one byte-level BPE token per line; line number = token id) and
  `tokenizer.json` (to encode prompts);
- `IMPORTED`, written last.

CTranslate2 format (version 6, WhisperSpec): `u32 version, str spec, u32 revision, u32 nvars,
{str name, u8 rank, u32 dims…, u8 dtype, u32 nbytes, data}…, u32 naliases,
{str alias, str target}…`, strings as `u16 length (incl. NUL)` + bytes. Dimensions come from
tensor shapes (the CT2 config.json has none).
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path

import numpy as np

from engines.weights.store import staged

logger = logging.getLogger(__name__)

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 whisper model this importer understands."""


def is_whisper_checkpoint(path: Path) -> bool:
    """Whether the store entry at `path` is a whisper model this importer wrote (the speech
    kind's detector: its `mlxd.json` says `"kind": "speech"`)."""
    try:
        return bool(json.loads((path / "mlxd.json").read_text()).get("kind") == "speech")
    except (OSError, ValueError, AttributeError):
        return False


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin` (aliases resolved) as numpy arrays."""
    data = memoryview(path.read_bytes())
    offset = 0

    def unpack(fmt: str) -> tuple[int, ...]:
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal offset
        (length,) = unpack("<H")
        text = bytes(data[offset : offset + length - 1]).decode()
        offset += length
        return text

    (version,) = unpack("<I")
    if version < 5:
        raise CT2FormatError(f"CTranslate2 model version {version} is too old (need >= 5)")
    spec = string()
    if spec != "WhisperSpec":
        raise CT2FormatError(f"not a whisper model: spec {spec!r}")
    unpack("<I")  # spec revision
    (count,) = unpack("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = unpack("<B")
        shape = unpack("<" + "I" * rank)
        (dtype_id,) = unpack("<B")
        (nbytes,) = unpack("<I")
        raw = data[offset : offset + nbytes]
        offset += nbytes
        if dtype_id == 5:  # bfloat16: the high half of a float32
            widened = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = widened.view(np.float32)
        elif dtype_id in _DTYPES:
            array = np.frombuffer(raw, dtype=_DTYPES[dtype_id])
        else:
            raise CT2FormatError(f"{name}: unknown dtype id {dtype_id}")
        variables[name] = array.reshape(shape)
    (aliases,) = unpack("<I")
    for _ in range(aliases):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return variables


def _linear(
    out: dict[str, np.ndarray], prefix: str, weight: np.ndarray, bias: np.ndarray | None
) -> None:
    out[f"{prefix}.weight"] = weight
    if bias is not None:
        out[f"{prefix}.bias"] = bias


def _attention(
    out: dict[str, np.ndarray], src: dict[str, np.ndarray], ct2: str, ours: str, fused_qkv: bool
) -> None:
    """Split CT2's fused projections into whisper's query/key/value/out (key has no bias)."""
    if fused_qkv:
        weight, bias = src[f"{ct2}/linear_0/weight"], src[f"{ct2}/linear_0/bias"]
        q_w, k_w, v_w = np.split(weight, 3)
        q_b, _, v_b = np.split(bias, 3)
        out_name = f"{ct2}/linear_1"
    else:
        q_w, q_b = src[f"{ct2}/linear_0/weight"], src[f"{ct2}/linear_0/bias"]
        k_w, v_w = np.split(src[f"{ct2}/linear_1/weight"], 2)
        _, v_b = np.split(src[f"{ct2}/linear_1/bias"], 2)
        out_name = f"{ct2}/linear_2"
    _linear(out, f"{ours}.query", q_w, q_b)
    _linear(out, f"{ours}.key", k_w, None)
    _linear(out, f"{ours}.value", v_w, v_b)
    _linear(out, f"{ours}.out", src[f"{out_name}/weight"], src[f"{out_name}/bias"])


def _layer_norm(
    out: dict[str, np.ndarray], src: dict[str, np.ndarray], ct2: str, ours: str
) -> None:
    out[f"{ours}.weight"] = src[f"{ct2}/gamma"]
    out[f"{ours}.bias"] = src[f"{ct2}/beta"]


def _block(out: dict[str, np.ndarray], src: dict[str, np.ndarray], ct2: str, ours: str) -> None:
    _attention(out, src, f"{ct2}/self_attention", f"{ours}.attn", fused_qkv=True)
    _layer_norm(out, src, f"{ct2}/self_attention/layer_norm", f"{ours}.attn_ln")
    if f"{ct2}/attention/linear_0/weight" in src:
        _attention(out, src, f"{ct2}/attention", f"{ours}.cross_attn", fused_qkv=False)
        _layer_norm(out, src, f"{ct2}/attention/layer_norm", f"{ours}.cross_attn_ln")
    _linear(out, f"{ours}.mlp1", src[f"{ct2}/ffn/linear_0/weight"], src[f"{ct2}/ffn/linear_0/bias"])
    _linear(out, f"{ours}.mlp2", src[f"{ct2}/ffn/linear_1/weight"], src[f"{ct2}/ffn/linear_1/bias"])
    _layer_norm(out, src, f"{ct2}/ffn/layer_norm", f"{ours}.mlp_ln")


def _count_layers(src: dict[str, np.ndarray], side: str) -> int:
    count = 0
    while f"{side}/layer_{count}/ffn/linear_0/weight" in src:
        count += 1
    return count


def convert(src: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(whisper-named float32 weights, ModelDimensions) from CT2 variables."""
    try:
        conv1 = src["encoder/conv1/weight"]
        embeddings = src["decoder/embeddings/weight"]
        dims = {
            "n_mels": int(conv1.shape[1]),
            "n_audio_ctx": int(src["encoder/position_encodings/encodings"].shape[0]),
            "n_audio_state": int(conv1.shape[0]),
            "n_audio_head": int(src["encoder/num_heads"]),
            "n_audio_layer": _count_layers(src, "encoder"),
            "n_vocab": int(embeddings.shape[0]),
            "n_text_ctx": int(src["decoder/position_encodings/encodings"].shape[0]),
            "n_text_state": int(embeddings.shape[1]),
            "n_text_head": int(src["decoder/num_heads"]),
            "n_text_layer": _count_layers(src, "decoder"),
        }
        out: dict[str, np.ndarray] = {}
        for conv in ("conv1", "conv2"):
            # CT2 (like PyTorch) stores conv kernels as (out, in, kernel); MLX: (out, kernel, in).
            out[f"encoder.{conv}.weight"] = src[f"encoder/{conv}/weight"].transpose(0, 2, 1)
            out[f"encoder.{conv}.bias"] = src[f"encoder/{conv}/bias"]
        for i in range(dims["n_audio_layer"]):
            _block(out, src, f"encoder/layer_{i}", f"encoder.blocks.{i}")
        _layer_norm(out, src, "encoder/layer_norm", "encoder.ln_post")
        out["decoder.token_embedding.weight"] = embeddings
        out["decoder.positional_embedding"] = src["decoder/position_encodings/encodings"]
        for i in range(dims["n_text_layer"]):
            _block(out, src, f"decoder/layer_{i}", f"decoder.blocks.{i}")
        _layer_norm(out, src, "decoder/layer_norm", "decoder.ln")
    except KeyError as exc:
        raise CT2FormatError(f"missing tensor {exc} in the CTranslate2 model") from exc
    weights = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in out.items()}
    return weights, dims


def import_ct2(model_dir: Path, target: Path) -> Path:
    """Convert the CT2 whisper directory `model_dir` (model.bin, config.json, vocabulary.txt,
    tokenizer.json) into the store directory `target`; atomic: `target` appears complete or not
    at all."""
    import mlx.core as mx

    weights, dims = convert(read_ct2(model_dir / "model.bin"))
    ct2_config = json.loads((model_dir / "config.json").read_text())
    vocabulary = (model_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    if len(vocabulary) != dims["n_vocab"]:
        raise CT2FormatError(
            f"vocabulary.txt has {len(vocabulary)} tokens, the model {dims['n_vocab']}"
        )
    with staged(target, "ct2") as scratch:
        mx.save_safetensors(
            str(scratch / "weights.safetensors"), {k: mx.array(v) for k, v in weights.items()}
        )
        (scratch / "config.json").write_text(json.dumps(dims, indent=2))
        meta = {
            "kind": "speech",
            "architecture": "whisper",
            "alignment_heads": ct2_config.get("alignment_heads", []),
            "suppress_ids": ct2_config.get("suppress_ids", []),
            "suppress_ids_begin": ct2_config.get("suppress_ids_begin", []),
        }
        (scratch / "mlxd.json").write_text(json.dumps(meta, indent=2))
        shutil.copyfile(model_dir / "vocabulary.txt", scratch / "vocabulary.txt")
        shutil.copyfile(model_dir / "tokenizer.json", scratch / "tokenizer.json")
    logger.info("imported whisper %s into %s (%s)", model_dir, target, dims)
    return target
