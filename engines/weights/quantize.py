"""Quantize a float checkpoint into the store with mlx-lm's own converter (`mlx_lm.convert`), so
a bf16 download fits a small Mac: 4-bit takes about 30% of bf16's memory, 8-bit about 55%.

Group size (how many weights share one scale and bias): 32 at 4 bits, 64 at 8 bits, unless asked.
mlx-lm's default, and mlx-community's copies, use 64 at both, but some checkpoints need 32 at 4
bits: SmolLM2's weights came from a Q4_1 GGUF (blocks of 32), and grouping them by 64 gives
garbage. 32 costs half a bit per weight more (5.0 bits instead of 4.5) and is never worse; at 8
bits, 64 is already as good as the float weights.

Invariants:
- MLX runs on the calling thread (the CLI's), never in a thread pool.
- The result is staged in `<name>.partial` and renamed into place once `IMPORTED` is written,
  like every importer's (engines/weights/store.py): a half-written copy is never served.
- An already quantized checkpoint is refused: quantizing its dequantized weights again would lose
  precision and save little.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path

from engines.weights.store import COMPLETE_MARKER

logger = logging.getLogger(__name__)

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)


def default_group_size(bits: int) -> int:
    """32 at 4 bits (safe for checkpoints that went through a 32-block GGUF), 64 at 8."""
    return 32 if bits == 4 else 64


def quantized_name(source_name: str, bits: int) -> str:
    """The store name of a quantized copy: `SmolLM2-135M-Instruct` → `SmolLM2-135M-Instruct-4bit`
    (mlx-community's naming)."""
    return f"{source_name}-{bits}bit"


def quantize_checkpoint(
    source: Path, destination: Path, bits: int, group_size: int | None = None
) -> Path:
    """Write `source` (an MLX or transformers safetensors checkpoint) quantized to `bits` into the
    store directory `destination` (replaced if present); ValueError for what cannot be done."""
    group_size = group_size or default_group_size(bits)
    if bits not in BITS:
        raise ValueError(f"--quantize takes {' or '.join(map(str, BITS))} (bits), not {bits}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"--group-size takes {', '.join(map(str, GROUP_SIZES))}, not {group_size}")
    _refuse_quantized(source)
    from mlx_lm.convert import convert

    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    logger.info("quantizing %s to %d-bit (group size %d)", source, bits, group_size)
    # mlx-lm reports its steps with print(); stdout stays for the command's own result line.
    with contextlib.redirect_stdout(sys.stderr):
        convert(str(source), str(staging), quantize=True, q_group_size=group_size, q_bits=bits)
    (staging / COMPLETE_MARKER).write_text(
        f"quantized from {source} by mlx_lm.convert ({bits}-bit, group size {group_size})\n"
    )
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination


def _refuse_quantized(source: Path) -> None:
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{source} has no readable config.json: not a checkpoint") from exc
    quantization = config.get("quantization") or config.get("quantization_config")
    if quantization:
        bits = quantization.get("bits", "?") if isinstance(quantization, dict) else "?"
        raise ValueError(
            f"{source} is already quantized ({bits}-bit): serve it as it is, or quantize its "
            "float original"
        )
