"""The native softmax kernel gives `mx.softmax`'s results bit for bit, builds where it can, and
falls back to MLX's softmax (same numbers) where it cannot."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache

from engines.llm import cpu_decode, native_softmax
from engines.llm.ragged_cache import RaggedKVCache
from tests.tiny import tiny_model

SUPPORTED = not native_softmax.unsupported_cpu() and bool(shutil.which("cc") or shutil.which("gcc"))
needs_kernel = pytest.mark.skipif(not SUPPORTED, reason="not an x86 CPU with AVX2/FMA and cc")


def _bits(array: mx.array) -> np.ndarray:
    return np.asarray(array).view(np.uint32)


def _native(scores: mx.array, monkeypatch: pytest.MonkeyPatch) -> mx.array:
    monkeypatch.setattr(native_softmax, "MIN_ELEMENTS", 0)
    return native_softmax.softmax(mx.array(scores))  # a copy: the kernel overwrites its input


@needs_kernel
def test_the_kernel_builds_and_loads_where_the_cpu_supports_it() -> None:
    kernel, detail = native_softmax.kernel_status()
    assert kernel is not None, detail


@needs_kernel
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0, 200.0])
@pytest.mark.parametrize("shape", [(8, 3, 24, 640), (2, 9, 5, 1), (3, 7, 13), (1, 17, 1029)])
def test_bit_for_bit_mx_softmax(
    scale: float, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row lengths with and without a tail past the last group of eight, row counts with and
    without a partial group of eight rows, and magnitudes from near-uniform to saturated."""
    mx.random.seed(int(scale * 100) + len(shape))
    scores = mx.random.normal(shape) * scale
    masked = mx.random.uniform(shape=shape) < 0.25
    scores = mx.where(masked, mx.finfo(mx.float32).min, scores)
    mx.eval(scores)
    expected = mx.softmax(scores, axis=-1, precise=True)
    got = _native(scores, monkeypatch)
    assert np.array_equal(_bits(got), _bits(expected))


@needs_kernel
def test_bit_for_bit_with_infinities_nans_and_fully_masked_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = np.random.default_rng(0).normal(size=(16, 100)).astype(np.float32) * 10
    rows[0, 3] = np.nan  # a NaN is MLX's maximum from where it is seen
    rows[1, 50] = np.inf
    rows[2, :] = -np.inf
    rows[3, :] = np.finfo(np.float32).min  # a row every key of which is masked
    rows[4, ::2] = -np.inf
    rows[5, 99] = np.nan
    rows[5, 7] = np.inf
    rows[6, :] = 88.5  # every score equal: each exp is exp(0)
    rows[7, :40] = -89.0  # exps below the underflow bound
    scores = mx.array(rows)
    expected = mx.softmax(scores, axis=-1, precise=True)
    got = _native(scores, monkeypatch)
    assert np.array_equal(_bits(got), _bits(expected))


def test_other_dtypes_and_small_softmaxes_are_mlxs() -> None:
    """float16 scores, and float32 ones below MIN_ELEMENTS, go to mx.softmax untouched."""
    half = mx.random.normal((4, 64)).astype(mx.float16)
    assert mx.array_equal(native_softmax.softmax(half), mx.softmax(half, axis=-1, precise=True))
    small = mx.random.normal((4, 64))
    mx.eval(small)
    before = np.array(small)
    result = native_softmax.softmax(small)
    assert np.array_equal(np.asarray(small), before)  # not overwritten
    assert mx.array_equal(result, mx.softmax(small, axis=-1, precise=True))


def test_without_a_compiler_mlxs_softmax_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(native_softmax, "_loaded", None)
    monkeypatch.setattr(native_softmax, "MIN_ELEMENTS", 0)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("MLXD_HOME", str(tmp_path))
    monkeypatch.setattr(native_softmax, "unsupported_cpu", lambda: "")
    kernel, detail = native_softmax.kernel_status()
    assert kernel is None and "did not build" in detail
    scores = mx.random.normal((8, 300))
    mx.eval(scores)
    assert mx.array_equal(native_softmax.softmax(scores), mx.softmax(scores, axis=-1))


def test_an_unsupported_cpu_never_builds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(native_softmax, "_loaded", None)
    monkeypatch.setenv("MLXD_HOME", str(tmp_path))
    monkeypatch.setattr(native_softmax.platform, "machine", lambda: "arm64")
    kernel, detail = native_softmax.kernel_status()
    assert kernel is None and "arm64" in detail
    assert not (tmp_path / "native").exists()


@needs_kernel
def test_cc_may_carry_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`CC="ccache gcc"`, `CC="gcc -m64"`: split as a shell would."""
    monkeypatch.setattr(native_softmax, "_loaded", None)
    monkeypatch.setenv("MLXD_HOME", str(tmp_path))
    monkeypatch.setenv("CC", f"{shutil.which('cc') or shutil.which('gcc')} -m64")
    kernel, detail = native_softmax.kernel_status()
    assert kernel is not None, detail
    assert "-m64" in detail


@needs_kernel
def test_built_once_into_mlxd_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(native_softmax, "_loaded", None)
    monkeypatch.setenv("MLXD_HOME", str(tmp_path))
    kernel, _ = native_softmax.kernel_status()
    assert kernel is not None
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native_softmax, "_loaded", None)
    assert native_softmax.kernel_status()[0] is not None
    assert [p.stat().st_mtime_ns for p in (tmp_path / "native").iterdir()] == [stamp]


@needs_kernel
@pytest.mark.parametrize("width", [1, 5], ids=["decode", "verify"])
def test_cpu_decode_steps_with_the_kernel_equal_mlx_lm_bit_for_bit(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch decode step and a verification pass over ragged rows (padding mask), the kernel
    forced on for every softmax, against mlx-lm's own layers."""
    model = tiny_model("llama")
    cpu_decode.install(model)
    calls = []
    kernel, _ = native_softmax.kernel_status()
    assert kernel is not None

    def counted(*args: object) -> None:
        calls.append(args)
        kernel(*args)  # type: ignore[misc]

    monkeypatch.setattr(native_softmax, "_loaded", (counted, "counted"))
    monkeypatch.setattr(native_softmax, "MIN_ELEMENTS", 0)
    rows = []
    for length in (7, 12, 9):
        cache = make_prompt_cache(model)
        mx.eval(model(mx.array([list(range(3, 3 + length))]), cache=cache))
        rows.append(cache)
    caches = [RaggedKVCache.merge([row[i] for row in rows]) for i in range(len(rows[0]))]
    inputs = mx.array([[5 + r + j for j in range(width)] for r in range(3)])
    reference_caches = copy.deepcopy(caches)
    with cpu_decode.decode_step(caches[0].offset, width):
        got = model(inputs, cache=caches)
    mx.eval(got)
    assert calls, "the kernel never ran"
    expected = model(inputs, cache=reference_caches)
    assert np.array_equal(_bits(got), _bits(expected))
