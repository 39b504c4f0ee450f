"""How much memory this device lets models use, and whether a model fits in it, asked before the
model loads: loading one that does not fit means swap thrash, an out-of-memory kill, or on a Mac
(other servers' users report) a kernel panic.

The figure: Metal's recommended working set (what the GPU keeps resident without the system
paging), else the device memory MLX reports (CUDA), else physical RAM (CPU) — the figure the chat
engine's default KV budget is half of (engines/llm/engine.py `default_kv_budget`). The pool's
default memory budget is a share of it (server/runtime.py).

A model needs its weights plus, for a chat model, its KV budget: the configured one, else at least
`MIN_KV_BYTES` (the default budget takes half the device less the weights, and never less).
"""

from __future__ import annotations

import os

from engines.errors import EngineUnavailable

MIN_KV_BYTES = 256 * 2**20


class ModelTooLarge(EngineUnavailable):
    """The model's weights plus its KV budget exceed what the device can use (503 naming it)."""


def usable_memory() -> tuple[int, str]:
    """(bytes models may use on this device, what that figure is)."""
    import mlx.core as mx

    info = mx.device_info()
    if wired := int(info.get("max_recommended_working_set_size") or 0):
        return wired, "Metal's recommended working set"
    if device := int(info.get("memory_size") or 0):
        return device, "device memory"
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "RAM"


def chat_kv_bytes(kv_budget_mb: int | None) -> int:
    """The KV memory a chat engine will take at least: the configured budget, else the least
    the default one takes."""
    return kv_budget_mb * 2**20 if kv_budget_mb else MIN_KV_BYTES


def check_fits(
    name: str, weights_bytes: int, kv_bytes: int, usable_bytes: int, what: str = "memory"
) -> None:
    """ModelTooLarge, with the numbers, when `weights_bytes + kv_bytes` exceed `usable_bytes`."""
    need = weights_bytes + kv_bytes
    if need <= usable_bytes:
        return
    kv = f" + KV budget {_gib(kv_bytes)}" if kv_bytes else ""
    raise ModelTooLarge(
        f"model '{name}' does not fit: it needs {_gib(need)} (weights {_gib(weights_bytes)}{kv}) "
        f"and this device can use {_gib(usable_bytes)} ({what}); use a smaller or quantized "
        "copy (mlxd import hf SOURCE --quantize 4) or a smaller kv_budget_mb",
        param="model",
    )


def _gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB"
