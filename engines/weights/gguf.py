"""GGUF → MLX model directory, for the architectures in engines/weights/gguf_architectures.py
(llama, qwen2, qwen3, gemma3).

Output: `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (with the
chat template), then the store's completion marker. Facts this relies on:
- Quantized tensors stay compact: every GGML type that is exactly an MLX affine quantization per
  32 values (Q4_0/Q4_1/Q8_0, which `mx.load` keeps as MLX triples, and Q5_0/Q5_1/Q4_K/Q5_K,
  decoded by engines/weights/gguf_quants.py) is stored as an MLX triple (packed weight, scales,
  biases, group 32) with mlx-lm's `quantization` config; other types (Q6_K, Q2_K, Q3_K, IQ*) are
  dequantized to float32 with `gguf`, a tensor at a time, and written in shards.
- `mlxd_dequantize_on_load` in config.json (DEQUANTIZE_ON_LOAD): the entry must run in float32,
  so engines/weights/checkpoint.py dequantizes its triples when loading, to the float32 values
  llama.cpp's dequantization gives (up to the sign of zero). Set for CPU imports (MLX's CPU
  quantized matmul is much slower than float32) and for files with types `mx.load` cannot keep
  (their GPU imports ran in float32 before triples were kept for them); without it (GPU imports
  of Q4_0/Q4_1/Q8_0 files) the triples run quantized, with float16 scales.
- llama.cpp permutes the Q and K rows of `llama` models for its RoPE layout; we undo it. The
  others are stored unpermuted; gemma3 stores its RMS norm weights as 1 + w (mlx-lm adds the 1).
- Rope settings: linear scaling from `{arch}.rope.scaling.*`; Llama 3.1+'s `rope_freqs` factors
  become mlx-lm's `llama3` scaling, checked to reproduce every factor; anything else is refused.
- The architecture is read from the header first: others are refused before any tensor is read.
- The tokenizer is rebuilt from `tokenizer.ggml.*` (engines/weights/gguf_tokenizer.py).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from engines.weights.checkpoint import DEQUANTIZE_ON_LOAD
from engines.weights.gguf_architectures import (
    ARCHITECTURES,
    TOP_NAMES,
    GGUFArchitecture,
    UnsupportedGGUF,
    rope_scaling,
)
from engines.weights.gguf_quants import AFFINE_BITS, GROUP_SIZE, affine_triple
from engines.weights.gguf_tokenizer import build_tokenizer
from engines.weights.store import staged

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
MLX_EXACT = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"}  # GGML types mx.load reads as stored
SHARD_BYTES = 2 << 30  # the importer holds one shard of converted weights in memory at a time


class GGUFImportError(ValueError):
    """The file is not a GGUF this importer can convert; the message says why."""


def import_gguf(source: Path, destination: Path, dequantize: bool) -> Path:
    """Convert `source` into the model directory `destination` (replaced if present).

    `dequantize`: the entry is for MLX on CPU, which runs float32 fastest: quantized linears
    are still stored compactly, marked to be dequantized when loaded (engines/weights/
    checkpoint.py); otherwise they run as MLX affine quantization (Metal/CUDA) where the file's
    types allow (see the module docstring).
    """
    reader = _opened(source)
    arch = _architecture(reader, source.name)  # from the header: refuse before any tensor is read
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise GGUFImportError(f"unsupported GGUF architecture {arch!r}; supported: {supported}")
    spec = ARCHITECTURES[arch]
    tensors, metadata, quantized, as_read = _read(source, reader)
    config = _model_config(arch, spec, metadata, tensors)
    float32 = dequantize or not as_read
    if quantized:
        default_bits = Counter(quantized.values()).most_common(1)[0][0]
        quantization: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default_bits}
        for module, bits in quantized.items():
            target = _target(module, spec)
            if bits != default_bits and target is not None:
                quantization[target] = {"group_size": GROUP_SIZE, "bits": bits}
        config["quantization"] = quantization
        if float32:
            config[DEQUANTIZE_ON_LOAD] = True
    converted = _converted(tensors, spec, config, set(quantized) if float32 else None)
    with staged(destination, f"imported from {source.name}") as staging:
        _save_sharded(staging, converted)
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer, tokenizer_config = build_tokenizer(metadata, config["max_position_embeddings"])
        tokenizer.save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    logger.info("imported %s into %s", source, destination)
    return destination


def _converted(
    tensors: Mapping[str, Any],
    spec: GGUFArchitecture,
    config: dict[str, Any],
    float32_except: set[str] | None,
) -> Iterator[tuple[str, Any]]:
    """(mlx-lm name, array) for every tensor mlx-lm has a place for, read one at a time.

    MLX-quantized triples are kept as read. `float32_except`: None keeps every dtype as read;
    otherwise every tensor except the triples of these (GGUF) modules becomes float32.
    """
    import mlx.core as mx

    for name in tensors:
        module, _, suffix = name.rpartition(".")
        target = _target(module, spec)
        if target is None:
            logger.info("skipping GGUF tensor %s", name)
            continue
        value = tensors[name]
        triple = module in (float32_except or ()) and suffix in ("weight", "scales", "biases")
        if float32_except is not None and not triple:
            value = value.astype(mx.float32)
        if spec.norms_plus_one and module.endswith("norm"):
            value = value - 1.0
        if spec.permuted_qk:
            value = _unpermuted(target, value, config)
        yield f"{target}.{suffix}", value


def _save_sharded(directory: Path, weights: Iterator[tuple[str, Any]]) -> None:
    """Write `weights` as MLX safetensors shards of about SHARD_BYTES, holding one shard at a
    time (`model.safetensors` when one is enough, else mlx-lm's numbered shards and index)."""
    import mlx.core as mx

    shard: dict[str, Any] = {}
    written: list[dict[str, Any]] = []
    size = 0

    def flush() -> None:
        nonlocal shard, size
        mx.save_safetensors(
            str(directory / f"shard-{len(written)}.safetensors"), shard, metadata={"format": "mlx"}
        )
        written.append({name: value.nbytes for name, value in shard.items()})
        shard, size = {}, 0

    for name, value in weights:
        mx.eval(value)
        shard[name] = value
        size += value.nbytes
        if size >= SHARD_BYTES:
            flush()
    if shard or not written:
        flush()
    if len(written) == 1:
        (directory / "shard-0.safetensors").rename(directory / "model.safetensors")
        return
    weight_map = {}
    for index, names in enumerate(written):
        file_name = f"model-{index + 1:05d}-of-{len(written):05d}.safetensors"
        (directory / f"shard-{index}.safetensors").rename(directory / file_name)
        weight_map.update(dict.fromkeys(names, file_name))
    total = sum(sum(names.values()) for names in written)
    index_file = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2))


def _opened(source: Path) -> Any:
    """The file's `GGUFReader`: its header parsed (seconds for a 262k-token vocabulary, so once
    per import), its tensors mapped, not loaded or dequantized."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(source))
    except (OSError, ValueError) as exc:
        raise GGUFImportError(f"{source.name} is not a readable GGUF file: {exc}") from exc


def _architecture(reader: Any, name: str) -> str:
    """`general.architecture` from a GGUF file's header."""
    field = reader.fields.get("general.architecture")
    if field is None:
        raise GGUFImportError(f"{name} names no architecture (general.architecture)")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _read(
    source: Path, reader: Any = None
) -> tuple[Mapping[str, Any], dict[str, Any], dict[str, int], bool]:
    """GGUF tensors by name (quantized ones as MLX triples `<module>.weight/.scales/.biases`),
    metadata as plain Python values, the bits of every quantized module (GGUF module name →
    bits), and whether every tensor is as `mx.load` reads it.

    mx.load keeps MLX_EXACT types exactly (Q4_0/Q4_1/Q8_0 as MLX quantized triples with float16
    scales) but reads K-quants as float16, rounding them: files with any other type are read
    with `gguf` (engines/weights/gguf_quants.py for the affine types, float32 for the rest).
    """
    import mlx.core as mx

    if reader is None:
        reader = _opened(source)
    types = {tensor.tensor_type.name for tensor in reader.tensors}
    if not types <= MLX_EXACT:
        logger.info("%s holds %s: decoding with gguf", source.name, sorted(types - MLX_EXACT))
        tensors, metadata = _read_with_gguf(reader)
        return tensors, metadata, tensors.bits, False
    loaded, metadata = cast(
        tuple[dict[str, Any], dict[str, Any]], mx.load(str(source), return_metadata=True)
    )
    plain = {key: _plain(value) for key, value in metadata.items()}
    return dict(loaded), plain, _quantized_bits(loaded), True


class _DecodedOnRead(Mapping[str, Any]):
    """A GGUF file's tensors by name, each decoded only when read: the importer holds one shard
    at a time, not the whole model (a 1.5B model is 6 GB as float32).

    A 2-D `<module>.weight` of a type in AFFINE_BITS appears as the MLX triple
    `<module>.weight` (packed), `.scales`, `.biases` (`bits` maps the module to its bits); the
    module's triple is decoded once, for the first of the three names read. Every other tensor
    appears under its own name, dequantized to float32.
    """

    def __init__(self, tensors: list[Any]) -> None:
        self._tensors: dict[str, tuple[Any, int | None]] = {}
        self.bits: dict[str, int] = {}
        for tensor in tensors:
            module, _, suffix = tensor.name.rpartition(".")
            bits = AFFINE_BITS.get(tensor.tensor_type.name)
            if bits is not None and suffix == "weight" and len(tensor.shape) == 2:
                self.bits[module] = bits
                for index, part in enumerate(("weight", "scales", "biases")):
                    self._tensors[f"{module}.{part}"] = (tensor, index)
            else:
                self._tensors[tensor.name] = (tensor, None)
        self._last: tuple[str, tuple[Any, ...]] = ("", ())

    def __getitem__(self, name: str) -> Any:
        import mlx.core as mx
        import numpy as np
        from gguf.quants import dequantize

        tensor, part = self._tensors[name]
        shape = tuple(int(d) for d in reversed(tensor.shape))
        if part is None:
            values = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
            return mx.array(values.astype(np.float32, copy=False))
        if self._last[0] != tensor.name:
            rows, columns = shape
            triple = affine_triple(tensor.data, tensor.tensor_type.name, (rows, columns))
            self._last = (tensor.name, tuple(mx.array(array) for array in triple))
        return self._last[1][part]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _read_with_gguf(reader: Any) -> tuple[_DecodedOnRead, dict[str, Any]]:
    import numpy as np
    from gguf import GGUFValueType

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
    return _DecodedOnRead(list(reader.tensors)), metadata


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
    arch: str, spec: GGUFArchitecture, metadata: dict[str, Any], tensors: Mapping[str, Any]
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
    try:
        scaling = rope_scaling(arch, metadata)
        if scaling is not None:
            config["rope_scaling"] = scaling
        spec.extra_config(config, metadata, tensors)
    except UnsupportedGGUF as exc:
        raise GGUFImportError(f"unsupported GGUF: {exc}") from exc
    return config


def _target(module: str, spec: GGUFArchitecture) -> str | None:
    """mlx-lm's module name for a llama.cpp tensor's module (`blk.3.attn_q`), or None when
    mlx-lm has no place for it."""
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", module)
    if match and match.group(2) in spec.layer_names:
        return f"model.layers.{match.group(1)}.{spec.layer_names[match.group(2)]}"
    return TOP_NAMES.get(module)


def _unpermuted(target: str, value: Any, config: dict[str, Any]) -> Any:
    """Undo llama.cpp's row permutation of q_proj/k_proj (weights, and quant scales/biases)."""
    if target.endswith("self_attn.q_proj"):
        heads = config["num_attention_heads"]
    elif target.endswith("self_attn.k_proj"):
        heads = config["num_key_value_heads"]
    else:
        return value
    rows, rest = value.shape[0], value.shape[1:]
    return value.reshape(heads, rows // heads // 2, 2, *rest).swapaxes(1, 2).reshape(value.shape)


def _quantized_bits(tensors: Mapping[str, Any]) -> dict[str, int]:
    """GGUF module name → bits, for every MLX-quantized module (packed uint32 weight + scales)
    of the arrays `mx.load` read."""
    bits = {}
    for name in tensors:
        if name.endswith(".scales"):
            module = name[: -len(".scales")]
            scales = tensors[name]
            packed_columns = tensors[f"{module}.weight"].shape[-1]
            input_features = scales.shape[-1] * GROUP_SIZE
            bits[module] = packed_columns * 32 // input_features
    return bits
