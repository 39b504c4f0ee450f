"""What this process runs on: mlxd's version, MLX's backend and device, physical memory.
Shared by `mlxd doctor` and the status page."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version


@dataclass(frozen=True)
class Runtime:
    version: str
    mlx_version: str
    backend: str  # metal | cuda | cpu
    device: str
    memory_bytes: int


def runtime() -> Runtime:
    import mlx.core as mx

    if mx.metal.is_available():
        backend = "metal"
    elif mx.cuda.is_available():
        backend = "cuda"
    else:
        backend = "cpu"
    try:
        ours = version("mlxd")
    except PackageNotFoundError:
        ours = "unknown"
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return Runtime(ours, version("mlx"), backend, str(mx.default_device()), memory)


def default_memory_budget() -> int:
    """Memory loaded models may take by default: 70% of RAM, and on Metal no more than 70% of
    the GPU's recommended working set (the wired memory it can keep resident)."""
    import mlx.core as mx

    budget = int(0.7 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    if mx.metal.is_available():
        wired = int(mx.device_info().get("max_recommended_working_set_size", 0))
        if wired:
            budget = min(budget, int(0.7 * wired))
    return budget
