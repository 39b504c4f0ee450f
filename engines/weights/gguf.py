"""GGUF → MLX model directory, for the architectures in engines/weights/gguf_architectures.py
(llama, qwen2, qwen3, gemma3).

Output: `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (with the
chat template), then the store's completion marker. Facts this relies on:
- `mx.load(path, return_metadata=True)` reads GGUF and keeps Q4_0/Q4_1/Q8_0 as MLX affine
  quantized triples (weight/scales/biases, group 32); other types are dequantized with `gguf`.
- llama.cpp permutes the Q and K rows of `llama` models for its RoPE layout; we undo it. The
  others are stored unpermuted; gemma3 stores its RMS norm weights as 1 + w (mlx-lm adds the 1).
- The architecture is read from the header first: others are refused before any tensor is read.
- The tokenizer is rebuilt from `tokenizer.ggml.*` (engines/weights/gguf_tokenizer.py).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, cast

from engines.weights.gguf_architectures import ARCHITECTURES, TOP_NAMES, GGUFArchitecture
from engines.weights.gguf_tokenizer import build_tokenizer
from engines.weights.store import staged

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
GROUP_SIZE = 32  # the block size of the GGUF quant types that mx.load keeps quantized


class GGUFImportError(ValueError):
    """The file is not a GGUF this importer can convert; the message says why."""


def import_gguf(source: Path, destination: Path, dequantize: bool) -> Path:
    """Convert `source` into the model directory `destination` (replaced if present).

    `dequantize`: write float32 weights (fast path for MLX on CPU); otherwise keep the GGUF's
    quantized linears as MLX affine quantization (Metal/CUDA).
    """
    import mlx.core as mx

    arch = _architecture(source)  # from the header: refuse before any tensor is read
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise GGUFImportError(f"unsupported GGUF architecture {arch!r}; supported: {supported}")
    spec = ARCHITECTURES[arch]
    tensors, metadata = _read(source)
    config = _model_config(arch, spec, metadata, tensors)
    weights = _rename(tensors, spec)
    if spec.permuted_qk:
        _unpermute_qk(weights, config)
    quantized = _quantized_bits(weights)
    if dequantize:
        for module, bits in quantized.items():
            weights[f"{module}.weight"] = mx.dequantize(
                weights[f"{module}.weight"],
                weights.pop(f"{module}.scales"),
                weights.pop(f"{module}.biases"),
                group_size=GROUP_SIZE,
                bits=bits,
            )
        weights = {name: value.astype(mx.float32) for name, value in weights.items()}
    elif quantized:
        default_bits = Counter(quantized.values()).most_common(1)[0][0]
        quantization: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default_bits}
        for module, bits in quantized.items():
            if bits != default_bits:
                quantization[module] = {"group_size": GROUP_SIZE, "bits": bits}
        config["quantization"] = quantization

    with staged(destination, f"imported from {source.name}") as staging:
        mx.save_safetensors(str(staging / "model.safetensors"), weights, metadata={"format": "mlx"})
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer, tokenizer_config = build_tokenizer(metadata, config["max_position_embeddings"])
        tokenizer.save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    logger.info("imported %s into %s", source, destination)
    return destination


def _architecture(source: Path) -> str:
    """`general.architecture` of a GGUF file, read from its header (the tensors are mapped,
    not loaded or dequantized)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(source)).fields.get("general.architecture")
    except (OSError, ValueError) as exc:
        raise GGUFImportError(f"{source.name} is not a readable GGUF file: {exc}") from exc
    if field is None:
        raise GGUFImportError(f"{source.name} names no architecture (general.architecture)")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _read(source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import mlx.core as mx

    try:
        loaded = mx.load(str(source), return_metadata=True)
    except Exception as exc:  # MLX reads only some quant types; dequantize the rest with gguf
        logger.info("mx.load could not read %s (%s); dequantizing with gguf", source, exc)
        return _read_with_gguf(source)
    tensors, metadata = cast(tuple[dict[str, Any], dict[str, Any]], loaded)
    return dict(tensors), {key: _plain(value) for key, value in metadata.items()}


def _read_with_gguf(source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import mlx.core as mx
    import numpy as np
    from gguf import GGUFReader, GGUFValueType
    from gguf.quants import dequantize

    reader = GGUFReader(str(source))
    metadata: dict[str, Any] = {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        kind = field.types[0] if field.types else None
        if kind == GGUFValueType.ARRAY:
            item_kind = field.types[-1]
            if item_kind == GGUFValueType.STRING:
                value: Any = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                value = np.array([field.parts[i][0] for i in field.data])
        elif kind == GGUFValueType.STRING:
            value = bytes(field.parts[field.data[0]]).decode("utf-8")
        else:
            value = field.parts[field.data[0]][0].item()
        metadata[field.name] = value
    tensors = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape))
        values = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        tensors[tensor.name] = mx.array(values.astype(np.float32, copy=False))
    return tensors, metadata


def _plain(value: Any) -> Any:
    """Metadata values from mx.load: scalars and arrays come as mx.array; make them Python."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _meta(metadata: dict[str, Any], key: str, default: Any = None) -> Any:
    value = metadata.get(key, default)
    if value is None:
        raise GGUFImportError(f"GGUF metadata lacks {key!r}")
    return value


def _model_config(
    arch: str, spec: GGUFArchitecture, metadata: dict[str, Any], tensors: dict[str, Any]
) -> dict[str, Any]:
    for key in spec.required:
        _meta(metadata, f"{arch}.{key}")
    heads = int(_meta(metadata, f"{arch}.attention.head_count"))
    hidden = int(_meta(metadata, f"{arch}.embedding_length"))
    vocab = int(metadata.get(f"{arch}.vocab_size") or len(_meta(metadata, "tokenizer.ggml.tokens")))
    head_dim = (
        metadata.get(f"{arch}.attention.key_length")
        or metadata.get(f"{arch}.rope.dimension_count")
        or hidden // heads
    )
    config: dict[str, Any] = {
        "model_type": spec.model_type,
        "architectures": [spec.hf_class],
        "hidden_size": hidden,
        "num_hidden_layers": int(_meta(metadata, f"{arch}.block_count")),
        "intermediate_size": int(_meta(metadata, f"{arch}.feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(metadata.get(f"{arch}.attention.head_count_kv") or heads),
        "head_dim": int(head_dim),
        "rms_norm_eps": float(_meta(metadata, f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(metadata.get(f"{arch}.rope.freq_base") or 10000.0),
        "max_position_embeddings": int(metadata.get(f"{arch}.context_length") or 4096),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    if "tokenizer.ggml.eos_token_id" in metadata:
        config["eos_token_id"] = int(metadata["tokenizer.ggml.eos_token_id"])
    if "tokenizer.ggml.bos_token_id" in metadata:
        config["bos_token_id"] = int(metadata["tokenizer.ggml.bos_token_id"])
    spec.extra_config(config, metadata, tensors)
    return config


def _rename(tensors: dict[str, Any], spec: GGUFArchitecture) -> dict[str, Any]:
    """llama.cpp tensor names → mlx-lm's; norms stored as 1 + w back to w where so stored."""
    renamed: dict[str, Any] = {}
    for name, value in tensors.items():
        base, _, suffix = name.rpartition(".")
        match = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
        if spec.norms_plus_one and base.endswith("norm"):
            value = value - 1.0
        if match and match.group(2) in spec.layer_names:
            target = f"model.layers.{match.group(1)}.{spec.layer_names[match.group(2)]}"
        elif base in TOP_NAMES:
            target = TOP_NAMES[base]
        else:
            logger.info("skipping GGUF tensor %s", name)
            continue
        renamed[f"{target}.{suffix}"] = value
    return renamed


def _unpermute_qk(weights: dict[str, Any], config: dict[str, Any]) -> None:
    """Undo llama.cpp's row permutation of q_proj/k_proj (weights, and quant scales/biases)."""
    for projection, heads in (
        ("q_proj", config["num_attention_heads"]),
        ("k_proj", config["num_key_value_heads"]),
    ):
        for name in [n for n in weights if f"self_attn.{projection}." in n]:
            value = weights[name]
            rows, rest = value.shape[0], value.shape[1:]
            weights[name] = (
                value.reshape(heads, rows // heads // 2, 2, *rest)
                .swapaxes(1, 2)
                .reshape(value.shape)
            )


def _quantized_bits(weights: dict[str, Any]) -> dict[str, int]:
    """module name → bits, for every MLX-quantized module (packed uint32 weight + scales)."""
    bits = {}
    for name, scales in weights.items():
        if name.endswith(".scales"):
            module = name[: -len(".scales")]
            packed_columns = weights[f"{module}.weight"].shape[-1]
            input_features = scales.shape[-1] * GROUP_SIZE
            bits[module] = packed_columns * 32 // input_features
    return bits
