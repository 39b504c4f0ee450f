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


def default_memory_budget(usable_bytes: int) -> int:
    """Memory loaded models may take by default: 70% of what the device can use
    (engines/device_memory.py: Metal's recommended working set, else device memory, else RAM),
    the figure each model is also checked against before it loads."""
    return int(0.7 * usable_bytes)
