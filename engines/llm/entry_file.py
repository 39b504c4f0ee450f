"""One prefix cache entry's file: a safetensors file (its arrays; its tokens, identity, layer
classes, scalars and checksum in the metadata) laid out, written, read and verified so that only
the two ends touch MLX.

Engine thread (MLX): `array_bytes` copies an array to bytes the caller owns, `header` lays out
the file's header (its exact length is known before the checksum, through a placeholder of the
checksum's length), `to_arrays` builds MLX arrays from a verified read. Any thread (no MLX, plain
bytes): `write` checksums and writes under a temporary name, then renames; `read` reads a file,
checks its identity, format and tokens, and verifies its checksum.

The checksum is BLAKE2b (16 bytes) over the tokens' text, then each array's name and row-major
bytes, by name: the same whichever side computes it, so files written by MLX's own
`save_safetensors` in earlier versions read back.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

# safetensors' names of the dtypes a cache's state may hold, and how each is read back (numpy
# has no bfloat16: its bytes come in as uint16 and are viewed as bfloat16 by MLX).
DTYPES: dict[str, tuple[mx.Dtype, type[np.generic]]] = {
    "BOOL": (mx.bool_, np.bool_),
    "U8": (mx.uint8, np.uint8),
    "I8": (mx.int8, np.int8),
    "U16": (mx.uint16, np.uint16),
    "I16": (mx.int16, np.int16),
    "U32": (mx.uint32, np.uint32),
    "I32": (mx.int32, np.int32),
    "U64": (mx.uint64, np.uint64),
    "I64": (mx.int64, np.int64),
    "F16": (mx.float16, np.float16),
    "BF16": (mx.bfloat16, np.uint16),
    "F32": (mx.float32, np.float32),
}
NAMES = {mx_dtype: name for name, (mx_dtype, _) in DTYPES.items()}
CHECKSUM_PLACEHOLDER = "0" * 32  # as long as a checksum: the header's size is known before it
MAX_HEADER_BYTES = 64 * 2**20

Chunk = tuple[str, bytes | memoryview]  # an array's name and its bytes


@dataclass
class Read:
    """A verified file's metadata and arrays as (name, dtype name, shape, bytes)."""

    metadata: dict[str, str]
    arrays: list[tuple[str, str, list[int], memoryview]]


def array_bytes(array: mx.array) -> bytes:
    """The array's elements, row-major, as bytes the caller owns (engine thread)."""
    return np.asarray(array.reshape(-1).view(mx.uint8)).tobytes()


def checksum(tokens: str, chunks: Sequence[Chunk]) -> str:
    digest = hashlib.blake2b(tokens.encode(), digest_size=16)
    for name, data in sorted(chunks, key=lambda chunk: chunk[0]):
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()


def header(arrays: list[tuple[str, mx.array, bytes]], metadata: dict[str, str]) -> bytes:
    """The file's header (its length, then JSON padded to 8 bytes) for arrays in this order."""
    tensors: dict[str, object] = {}
    offset = 0
    for name, array, data in arrays:
        tensors[name] = {
            "dtype": NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    text = json.dumps({**tensors, "__metadata__": metadata}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write(temporary: Path, final: Path, head: bytes, tokens: str, chunks: Sequence[Chunk]) -> None:
    """Checksum, write under a temporary name, rename (no MLX: any thread)."""
    placeholder = f'"checksum":"{CHECKSUM_PLACEHOLDER}"'.encode()
    if head.count(placeholder) != 1:
        raise ValueError("the header has no checksum placeholder")
    head = head.replace(placeholder, f'"checksum":"{checksum(tokens, chunks)}"'.encode())
    with temporary.open("wb") as file:
        file.write(head)
        for _, data in chunks:
            file.write(data)
    os.replace(temporary, final)


def read(path: Path, identity: str, file_format: str, tokens: str) -> Read:
    """Read and verify a file (no MLX: any thread); ValueError or OSError if it is not a sound
    entry of this identity, format and tokens."""
    data = memoryview(path.read_bytes())
    if len(data) < 8:
        raise ValueError("truncated")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES or 8 + length > len(data):
        raise ValueError("header too large or truncated")
    fields = json.loads(bytes(data[8 : 8 + length]))
    metadata = fields.pop("__metadata__", {})
    if metadata.get("identity") != identity or metadata.get("format") != file_format:
        raise ValueError("stale: written for another model or format")
    if metadata.get("tokens") != tokens:
        raise ValueError("its tokens are not its key")
    base = 8 + length
    arrays = []
    for name, info in fields.items():
        begin, end = info["data_offsets"]
        if info["dtype"] not in DTYPES or not 0 <= begin <= end <= len(data) - base:
            raise ValueError(f"array {name} does not fit the file")
        arrays.append((name, info["dtype"], list(info["shape"]), data[base + begin : base + end]))
    if checksum(tokens, [(name, view) for name, _, _, view in arrays]) != metadata["checksum"]:
        raise ValueError("checksum mismatch")
    return Read(metadata, arrays)


def to_arrays(entry: Read) -> dict[str, mx.array]:
    """The verified read's arrays in MLX (engine thread)."""
    arrays = {}
    for name, dtype_name, shape, view in entry.arrays:
        mx_dtype, np_dtype = DTYPES[dtype_name]
        host = np.frombuffer(view, dtype=np_dtype).reshape(shape)
        array = mx.array(host)
        arrays[name] = array.view(mx_dtype) if array.dtype != mx_dtype else array
    return arrays
