"""Loading an mlx-lm checkpoint directory of the store: mlx-lm's `load`, then, for an entry whose
config.json sets DEQUANTIZE_ON_LOAD, every quantized module replaced by its float32 equivalent.

The GGUF importer (engines/weights/gguf.py) keeps quantized weights compactly on disk as MLX
affine triples; an entry imported for CPU (or from a file with K-quants) must still run in
float32: MLX's CPU quantized matmul is ~3x slower than float32 with a BLAS at one token and
~100x at prefill. Dequantizing with float32 scales and biases gives the float32 values the
importer used to write (llama.cpp's dequantization, up to the sign of zero), so the model runs
the same arithmetic as before. Entries without the key (float32 entries imported before it,
checkpoints from a hub, GPU imports of Q4_0/Q4_1/Q8_0 files) load exactly as mlx-lm loads them.

Every mlxd loader of an LLM directory, and the tests' reference loaders of imported entries, go
through `load_checkpoint` (the decoder embedders, which build their model themselves, through
`dequantized_weights`), so the reference and mlxd see the same weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

DEQUANTIZE_ON_LOAD = "mlxd_dequantize_on_load"


def load_checkpoint(path: Path | str, **options: Any) -> Any:
    """`mlx_lm.utils.load(path, **options)` (the same tuple it returns), with the model's
    quantized modules dequantized to float32 when config.json asks for it. With `lazy=True`
    the float32 weights stay lazy too (a sharded rank evaluates only its slices' sources)."""
    from mlx_lm.utils import load

    loaded = load(str(path), **options)
    if dequantize_on_load(Path(path)):
        dequantize_model(loaded[0], evaluate=not options.get("lazy", False))
    return loaded


def dequantize_on_load(path: Path) -> bool:
    """Whether the checkpoint at `path` asks to run in float32 (missing or unreadable config:
    no; mlx-lm's own load reports that)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get(DEQUANTIZE_ON_LOAD, False))


def loaded_bytes(path: Path) -> int:
    """The memory the weights at `path` take once loaded: their files' sizes, except for an
    entry dequantized on load, whose quantized triples become float32 (3-4x their size on disk;
    read from the safetensors headers, no tensor is loaded)."""
    files = sorted(path.glob("*.safetensors"))
    if not dequantize_on_load(path):
        return sum(f.stat().st_size for f in files)
    quantization = json.loads((path / "config.json").read_text()).get("quantization", {})
    total = 0
    for file in files:
        header = _safetensors_header(file)
        for name, entry in header.items():
            if name == "__metadata__" or name.endswith((".scales", ".biases")):
                continue
            elements = math.prod(entry["shape"])
            module = name.rpartition(".")[0]
            if f"{module}.scales" in header:  # packed codes: 32 bits hold 32 / bits of them
                spec = quantization.get(module, quantization)
                elements = elements * 32 // int(spec["bits"])
            total += 4 * elements
    return total


def _safetensors_header(file: Path) -> dict[str, Any]:
    with file.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return dict(json.loads(handle.read(size)))


def dequantize_model(model: Any, evaluate: bool = True) -> None:
    """Replace every QuantizedLinear / QuantizedEmbedding of `model` (affine mode) by a float32
    Linear / Embedding holding `mx.dequantize` of its triple with float32 scales and biases."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    replacements: list[tuple[str, Any]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            linear = nn.Linear(1, 1, bias="bias" in module)
            linear.weight = _dequantized(module)
            if "bias" in module:
                linear.bias = module.bias
            replacements.append((name, linear))
        elif isinstance(module, nn.QuantizedEmbedding):
            embedding = nn.Embedding(1, 1)  # keeps as_linear for tied output heads
            embedding.weight = _dequantized(module)
            replacements.append((name, embedding))
    if replacements:
        model.update_modules(tree_unflatten(replacements))
        if evaluate:
            mx.eval(model.parameters())


def dequantized_weights(weights: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's arrays by name, for loaders that build the model without mlx-lm's `load`
    (decoder embedders): with config.json's DEQUANTIZE_ON_LOAD, every triple `X.weight`,
    `X.scales`, `X.biases` becomes the float32 `X.weight` that `dequantize_model` would give
    (bits per module from the `quantization` config); otherwise `weights` as they are."""
    import mlx.core as mx

    if not config.get(DEQUANTIZE_ON_LOAD, False):
        return weights
    quantization = config["quantization"]
    result = dict(weights)
    for name in weights:
        if name.endswith(".scales"):
            module = name[: -len(".scales")]
            spec = quantization.get(module, quantization)
            result[f"{module}.weight"] = mx.dequantize(
                result[f"{module}.weight"],
                result.pop(name).astype(mx.float32),
                result.pop(f"{module}.biases").astype(mx.float32),
                group_size=spec["group_size"],
                bits=spec["bits"],
            )
    return result


def _dequantized(module: Any) -> Any:
    import mlx.core as mx

    if module.mode != "affine":
        raise ValueError(f"cannot dequantize {module.mode!r} quantization on load")
    # float32 scales and biases: float16 ones would round the result to float16
    return mx.dequantize(
        module.weight,
        module.scales.astype(mx.float32),
        module.biases.astype(mx.float32),
        group_size=module.group_size,
        bits=module.bits,
    )
