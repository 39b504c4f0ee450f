"""The attention softmax of CPU decode steps, verification passes and prompt passes, computed by
a small C kernel (native_softmax.c) that gives MLX's own results bit for bit, ~10x faster on x86.

Why: MLX's CPU backend has no vector code on x86 (its SIMD width there is 1), so its softmax
computes each exponential one at a time (~12 ns). A speculative verification pass of 8 rows x
8 positions over ~640 cached tokens of SmolLM2-135M computes 11M of them, 42% of the pass
(measured: 388 ms with MLX's softmax, 225 ms with none). The kernel runs the same IEEE
operations in the same order, eight elements at a time where the order does not matter, so a
step's logits do not change by a bit (tests compare it with `mx.softmax` bit for bit; the one
exception is which payload a row of several different NaNs ends with: all NaN either way).

How: the scores are evaluated (a sync point inside the step: CPU steps are not pipelined, and on
a CPU this costs far less than it saves on the large passes that use it), read through the
buffer protocol, which shares their memory, and replaced in place by their softmax. So the
caller must own the scores: an intermediate no other array shares (cpu_decode's attention
builds them itself).

Where: x86-64 with AVX2 and FMA, and a C compiler (MLX's CPU backend already needs one for
`mx.compile`). The kernel is built on first use, once per source and compiler, into
`MLXD_HOME/native/` (written under a temporary name, then renamed: concurrent builders are
harmless). Anything else — another machine, no compiler, a failed build, another dtype, a small
softmax — falls back to `mx.softmax`, which computes the same numbers.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np

from engines.weights.store import default_home

log = logging.getLogger("mlxd.engines")

SOURCE = Path(__file__).with_suffix(".c")
# -ffp-contract=off: no multiply-add fused except MLX's own fmas (see the source).
FLAGS = ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared")
# Below this many scores the sync point costs about what the kernel saves (one row's decode step
# over a few hundred tokens); MLX's softmax runs them.
MIN_ELEMENTS = 16_384

RowSoftmax = Callable[[int, int, int], None]  # (address, rows, row length)
NO_COMPILER = "no C compiler (cc, gcc or $CC)"

_lock = threading.Lock()
_loaded: tuple[RowSoftmax | None, str] | None = None


def softmax(scores: mx.array) -> mx.array:
    """Softmax over the last axis of `scores`, as `mx.softmax(scores, axis=-1, precise=True)`
    computes it. A float32 array large enough is evaluated and overwritten in place (its
    buffer is the result): the caller must own it."""
    if scores.dtype != mx.float32 or scores.size < MIN_ELEMENTS:
        return mx.softmax(scores, axis=-1, precise=True)
    kernel, _ = kernel_status()
    if kernel is None:
        return mx.softmax(scores, axis=-1, precise=True)
    scores = mx.contiguous(scores)
    mx.eval(scores)
    view = np.asarray(scores)  # shares the array's memory (MLX's buffer protocol)
    length = scores.shape[-1]
    kernel(view.ctypes.data, scores.size // length, length)
    return scores


def kernel_status() -> tuple[RowSoftmax | None, str]:
    """(the kernel, or None, and why) — built and loaded once per process."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load()
            if _loaded[0] is None:
                log.info("native softmax off: %s (MLX's softmax is used)", _loaded[1])
        return _loaded


def _load() -> tuple[RowSoftmax | None, str]:
    unsupported = unsupported_cpu()
    if unsupported:
        return None, unsupported
    found = shutil.which("cc") or shutil.which("gcc")
    compiler = shlex.split(os.environ.get("CC", "")) or ([found] if found else [])
    if not compiler:
        return None, NO_COMPILER
    try:
        library = _built(compiler, default_home() / "native")
        function = ctypes.CDLL(str(library)).mlxd_softmax_rows
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        return None, f"the kernel did not build or load: {error}"
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    function.restype = None
    return function, f"built with {' '.join(compiler)}: {library}"


def unsupported_cpu() -> str:
    """Why this CPU cannot run the kernel ('' when it can)."""
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return f"a {platform.machine()} CPU (the kernel is x86 AVX2)"
    try:
        flags = next(
            set(line.split(":", 1)[1].split())
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "no /proc/cpuinfo to read the CPU's features from"
    missing = {"avx2", "fma"} - flags
    return f"the CPU lacks {', '.join(sorted(missing))}" if missing else ""


def _built(compiler: list[str], directory: Path) -> Path:
    """The shared library for this source and compiler, compiled into `directory` if absent."""
    version = subprocess.run(
        [*compiler, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    digest = hashlib.sha256(
        SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()
    ).hexdigest()[:16]
    library = directory / f"softmax-{digest}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=directory, suffix=".so.partial")
    os.close(handle)
    try:
        subprocess.run(
            [*compiler, *FLAGS, str(SOURCE), "-o", partial],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        os.replace(partial, library)
    finally:
        Path(partial).unlink(missing_ok=True)
    return library
