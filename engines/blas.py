"""Preload OpenBLAS on Linux before MLX is imported.

The `mlx[cpu]` wheel links `libblas.so.3` and bundles a slow reference implementation. Loading an
optimised `libblas.so.3` with RTLD_GLOBAL first makes MLX resolve its BLAS symbols to it (about 30x
faster fp32 matmul on x86). Invariant: `preload()` must run before the first `import mlx.core` in
the process; after that it is too late and it only reports what happened.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

# Where distributions put a threaded OpenBLAS that exports the reference BLAS ABI.
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
)


@dataclass(frozen=True)
class BlasStatus:
    """What `preload` did: `library` is the path loaded, or None with the reason in `detail`."""

    library: str | None
    detail: str


_status: BlasStatus | None = None


def find_openblas(explicit: str | None = None) -> str | None:
    """The OpenBLAS to load: `explicit` if given and present, else the first candidate found."""
    if explicit:
        return explicit if os.path.exists(explicit) else None
    return next((path for path in CANDIDATES if os.path.exists(path)), None)


def preload(disabled: bool = False, explicit: str | None = None) -> BlasStatus:
    """Load OpenBLAS globally (Linux only, idempotent). Never raises: a failure is reported."""
    global _status
    if _status is not None:
        return _status
    if not sys.platform.startswith("linux"):
        _status = BlasStatus(None, "not needed on this platform (MLX uses Accelerate/Metal/CUDA)")
    elif disabled:
        _status = BlasStatus(None, "disabled by MLXD_NO_OPENBLAS")
    elif "mlx.core" in sys.modules:
        _status = BlasStatus(None, "mlx.core was imported before preload; bundled BLAS in use")
    else:
        path = find_openblas(explicit)
        if path is None:
            _status = BlasStatus(None, "OpenBLAS not found; install libopenblas0-pthread")
        else:
            # One BLAS thread per core; OpenBLAS otherwise oversubscribes with MLX's own threads.
            os.environ.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                _status = BlasStatus(path, "preloaded")
            except OSError as exc:
                _status = BlasStatus(None, f"failed to load {path}: {exc}")
    return _status


def preload_from_env() -> BlasStatus:
    """`preload` configured by MLXD_NO_OPENBLAS and MLXD_BLAS_PATH (read before settings exist)."""
    disabled = os.environ.get("MLXD_NO_OPENBLAS", "").lower() in ("1", "true", "yes")
    return preload(disabled=disabled, explicit=os.environ.get("MLXD_BLAS_PATH") or None)


if __name__ == "__main__":
    # `python -m engines.blas --check`: exit 0 when OpenBLAS would be used (or is not needed).
    found = not sys.platform.startswith("linux") or find_openblas(os.environ.get("MLXD_BLAS_PATH"))
    print(find_openblas(os.environ.get("MLXD_BLAS_PATH")) or "OpenBLAS not found")
    sys.exit(0 if found else 1)
