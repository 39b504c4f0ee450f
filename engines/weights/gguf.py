"""GGUF → MLX model directory, for llama-, qwen2- and gemma3-architecture models.

Output: `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (with the
chat template), then the store's completion marker. Facts this relies on:
- `mx.load(path, return_metadata=True)` reads GGUF and keeps Q4_0/Q4_1/Q8_0 as MLX affine
  quantized triples (weight/scales/biases, group 32); other types are dequantized with `gguf`.
- llama.cpp permutes the Q and K rows of `llama` models for its RoPE layout; we undo it. qwen2 and
  gemma3 are stored unpermuted; gemma3 stores its RMS norm weights as 1 + w (mlx-lm adds the 1).
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

from engines.weights.gguf_tokenizer import build_tokenizer
from engines.weights.store import staged

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3")
GROUP_SIZE = 32  # the block size of the GGUF quant types that mx.load keeps quantized

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GEMMA3_LAYER_NAMES = {
    **_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Every gemma3 model has global attention on every 6th layer, sliding windows elsewhere, and a
# local rope base of 10000 (llama.cpp's loader sets them too; the GGUF does not carry them).
_GEMMA3_FIXED = {"sliding_window_pattern": 6, "rope_local_base_freq": 10000.0}


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
    tensors, metadata = _read(source)
    config = _model_config(arch, metadata, tensors)
    weights = _rename(tensors, arch)
    if arch == "llama":
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
        tensors[tensor.name] = mx.array(values.astype(np.float32))
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


def _model_config(arch: str, metadata: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    heads = int(_meta(metadata, f"{arch}.attention.head_count"))
    hidden = int(_meta(metadata, f"{arch}.embedding_length"))
    vocab = int(metadata.get(f"{arch}.vocab_size") or len(_meta(metadata, "tokenizer.ggml.tokens")))
    config: dict[str, Any] = {
        "model_type": arch,
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_meta(metadata, f"{arch}.block_count")),
        "intermediate_size": int(_meta(metadata, f"{arch}.feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(metadata.get(f"{arch}.attention.head_count_kv") or heads),
        "head_dim": int(metadata.get(f"{arch}.rope.dimension_count") or hidden // heads),
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
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
        config["mlp_bias"] = False
    if arch == "gemma3":
        _gemma3_config(config, metadata)
    return config


def _gemma3_config(config: dict[str, Any], metadata: dict[str, Any]) -> None:
    """mlx-lm's gemma3_text arguments from a gemma3 GGUF (head size from key_length)."""
    head_dim = int(_meta(metadata, "gemma3.attention.key_length"))
    config.update(_GEMMA3_FIXED)
    config["model_type"] = "gemma3_text"
    config["architectures"] = ["Gemma3ForCausalLM"]
    config["head_dim"] = head_dim
    config["query_pre_attn_scalar"] = head_dim
    config["sliding_window"] = int(_meta(metadata, "gemma3.attention.sliding_window"))
    tokens = list(_meta(metadata, "tokenizer.ggml.tokens"))
    if "<end_of_turn>" in tokens and "eos_token_id" in config:  # instruction-tuned turns end so
        config["eos_token_id"] = [config["eos_token_id"], tokens.index("<end_of_turn>")]


def _rename(tensors: dict[str, Any], arch: str) -> dict[str, Any]:
    """llama.cpp tensor names → mlx-lm's; gemma3's norms from 1 + w back to w."""
    layer_names = _GEMMA3_LAYER_NAMES if arch == "gemma3" else _LAYER_NAMES
    renamed: dict[str, Any] = {}
    for name, value in tensors.items():
        base, _, suffix = name.rpartition(".")
        match = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
        if arch == "gemma3" and base.endswith("norm"):
            value = value - 1.0
        if match and match.group(2) in layer_names:
            target = f"model.layers.{match.group(1)}.{layer_names[match.group(2)]}"
        elif base in _TOP_NAMES:
            target = _TOP_NAMES[base]
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
