"""DiskPrefixCache: prefix cache entries spilled to disk, so a long system prompt or agent history
resumes after a restart or after its entry was evicted from memory.

One safetensors file per entry under `<directory>/<model identity digest>/`: the cache's arrays,
and in its metadata the tokens it holds, whether it can be trimmed, each layer's class and
non-array state, the model identity, and a BLAKE2b checksum over tokens and array bytes. The
memory `PrefixCache` writes an entry here when it evicts it and when the engine unloads; it reads
one back when a prompt's best reusable prefix is on disk rather than in memory. Given a
`SpillWriter`, the file work (checksum, write, rename, touch, delete) runs on its thread: the
engine thread only copies an entry's arrays to bytes and lays out its header (so it knows the
file's exact size), and a read first waits for the writes submitted before it.

Only entries of at least MIN_TOKENS tokens are written, and only prefixes that long served.

Invariants (engine thread only, but for the writer's file operations): the files' total size
(counted when a write is submitted) ≤ `max_bytes`, least recently used
removed first (use = save or load; the order survives restarts through file times); an entry
is served only if its file parses, its identity is this model's and its checksum matches —
otherwise the file is deleted and the lookup misses; files are written to a temporary name and
renamed, so a crash never leaves a half-written entry under a real name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import cache as mlx_lm_cache

from engines.llm import caches
from engines.llm.quantized_cache import QuantizedKV
from engines.llm.spill_writer import SpillWriter

logger = logging.getLogger(__name__)

FORMAT = "mlxd-prefix-1"
# Layer classes an entry may hold (rebuilt with `from_state`): plain and quantized KV caches.
# (Sliding windows and SSM states stay in memory: their rebuilt form is not tested yet.)
CLASSES: dict[str, Any] = {cls.__name__: cls for cls in (mlx_lm_cache.KVCache, QuantizedKV)}
PARTIAL = "partial-"  # prefix of files being written
# Entries shorter than this stay in memory only, and no shorter prefix is served from disk: such
# a prompt prefills in about a second on a laptop-class CPU and in milliseconds on a GPU, batched
# with its neighbours, while a disk round trip (read and checksum, and the write of the entry it
# evicts) runs on the engine thread and holds up every stream. On an H200, 256 chat clients of
# ~170 tokens each, resuming from disk, waited 4-5 s for their first tokens (docs/benchmarks.md).
MIN_TOKENS = 512


def model_identity(path: Path, options: str) -> str:
    """What a cache depends on: the checkpoint (config, weight files' names, sizes and times) and
    the cache options (e.g. kv_bits). Any change makes earlier entries stale."""
    parts = [FORMAT, str(path.resolve()), options]
    for file in sorted(path.glob("*")):
        if file.suffix in (".json", ".safetensors"):
            stat = file.stat()
            parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    config = path / "config.json"
    if config.exists():
        parts.append(config.read_text())
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


@dataclass
class _OnDisk:
    path: Path
    nbytes: int
    trimmable: bool


# safetensors' names of the dtypes a cache's state may hold.
SAFETENSORS_DTYPES = {
    mx.bool_: "BOOL",
    mx.uint8: "U8",
    mx.int8: "I8",
    mx.uint16: "U16",
    mx.int16: "I16",
    mx.uint32: "U32",
    mx.int32: "I32",
    mx.uint64: "U64",
    mx.int64: "I64",
    mx.float16: "F16",
    mx.bfloat16: "BF16",
    mx.float32: "F32",
}
CHECKSUM_PLACEHOLDER = "0" * 32  # as long as a checksum: the header's size is known before it


def _array_bytes(array: mx.array) -> bytes:
    """The array's elements, row-major, as bytes the caller owns (engine thread)."""
    return np.asarray(array.reshape(-1).view(mx.uint8)).tobytes()


def _checksum(tokens: str, chunks: list[tuple[str, bytes]]) -> str:
    """BLAKE2b over the tokens, then each array's name and bytes, by name."""
    digest = hashlib.blake2b(tokens.encode(), digest_size=16)
    for name, data in sorted(chunks, key=lambda chunk: chunk[0]):
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()


def _safetensors_header(
    chunks: list[tuple[str, mx.array, bytes]], metadata: dict[str, str]
) -> bytes:
    """The file's header (its length, then JSON padded to 8 bytes) for arrays in this order."""
    tensors: dict[str, Any] = {}
    offset = 0
    for name, array, data in chunks:
        tensors[name] = {
            "dtype": SAFETENSORS_DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    text = json.dumps({**tensors, "__metadata__": metadata}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _write_entry(
    temporary: Path, final: Path, header: bytes, tokens: str, chunks: list[tuple[str, bytes]]
) -> None:
    """Checksum, write under a temporary name, rename (the writer's thread, or the caller's)."""
    checksum = _checksum(tokens, chunks)
    placeholder = f'"checksum":"{CHECKSUM_PLACEHOLDER}"'.encode()
    assert header.count(placeholder) == 1
    header = header.replace(placeholder, f'"checksum":"{checksum}"'.encode())
    with temporary.open("wb") as file:
        file.write(header)
        for _, data in chunks:
            file.write(data)
    os.replace(temporary, final)


def _header(path: Path) -> dict[str, str]:
    """A safetensors file's metadata, without reading its arrays."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > 64 * 2**20:
            raise ValueError("header too large")
        metadata: dict[str, str] = json.loads(file.read(length)).get("__metadata__", {})
        return metadata


class DiskPrefixCache:
    def __init__(
        self, directory: Path, identity: str, max_bytes: int, writer: SpillWriter | None = None
    ) -> None:
        self.directory = directory / identity
        self.identity = identity
        self.max_bytes = max_bytes
        self._writer = writer  # None: file work on the caller's thread
        self.nbytes = 0
        self.hits = 0
        self.dropped = 0  # corrupt or stale entries deleted
        self._entries: OrderedDict[tuple[int, ...], _OnDisk] = OrderedDict()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._scan()

    def __len__(self) -> int:
        return len(self._entries)

    def _scan(self) -> None:
        """Index the entries already on disk (their headers only), oldest use first."""
        for unfinished in self.directory.glob(f"{PARTIAL}*"):
            unfinished.unlink(missing_ok=True)
        files = sorted(self.directory.glob("*.safetensors"), key=lambda f: f.stat().st_mtime_ns)
        for file in files:
            try:
                metadata = _header(file)
                if metadata.get("identity") != self.identity:
                    raise ValueError("another model's entry")
                key = tuple(int(t) for t in metadata["tokens"].split(","))
                trimmable = metadata["trimmable"] == "1"
            except (OSError, ValueError, KeyError, struct.error) as exc:
                self._drop(file, f"unreadable ({exc})")
                continue
            self._entries[key] = _OnDisk(file, file.stat().st_size, trimmable)
            self.nbytes += file.stat().st_size
        self._evict()

    def best(self, prompt: list[int], usable: int) -> tuple[tuple[int, ...] | None, int]:
        """The entry that serves the longest prefix of `prompt` (at most `usable` tokens):
        (its key, tokens reused), or (None, 0)."""
        best_key, best = None, 0
        if usable < MIN_TOKENS:
            return None, 0
        for key, entry in self._entries.items():
            limit = min(len(key), usable)
            length = 0
            while length < limit and key[length] == prompt[length]:
                length += 1
            if length < len(key) and not entry.trimmable:
                continue
            if length > best and length >= MIN_TOKENS:
                best_key, best = key, length
        return best_key, best

    def save(self, tokens: tuple[int, ...], cache: list[Any]) -> None:
        """Write an entry (a no-op for one already on disk, one shorter than MIN_TOKENS, or a
        cache kind not listed)."""
        if len(tokens) < MIN_TOKENS:
            return
        if tokens in self._entries:
            self._touch(tokens)
            return
        if any(type(layer).__name__ not in CLASSES for layer in cache):
            return
        flat: Any = tree_flatten([layer.state for layer in cache])
        arrays = sorted((name, value) for name, value in flat if isinstance(value, mx.array))
        scalars = {name: value for name, value in flat if not isinstance(value, mx.array)}
        text = ",".join(str(t) for t in tokens)
        metadata = {
            "format": FORMAT,
            "identity": self.identity,
            "tokens": text,
            "trimmable": "1" if caches.trimmable(cache) else "0",
            "classes": json.dumps([type(layer).__name__ for layer in cache]),
            "scalars": json.dumps(scalars),
            "checksum": CHECKSUM_PLACEHOLDER,
        }
        laid_out = [(name, array, _array_bytes(array)) for name, array in arrays]
        header = _safetensors_header(laid_out, metadata)
        chunks = [(name, data) for name, _, data in laid_out]
        data_bytes = sum(len(data) for _, data in chunks)
        name = f"{hashlib.blake2b(text.encode()).hexdigest()[:32]}.safetensors"
        temporary, final = self.directory / f"{PARTIAL}{name}", self.directory / name
        self._do(partial(_write_entry, temporary, final, header, text, chunks), data_bytes)
        size = len(header) + data_bytes
        self._entries[tokens] = _OnDisk(final, size, caches.trimmable(cache))
        self.nbytes += size
        self._evict()

    def load(self, key: tuple[int, ...]) -> list[Any] | None:
        """The entry's cache, or None (the file dropped) if it is corrupt or stale."""
        entry = self._entries[key]
        if self._writer is not None:
            self._writer.flush()  # its file may still be on its way
        try:
            loaded: Any = mx.load(str(entry.path), return_metadata=True)
            arrays, metadata = loaded
            if metadata.get("identity") != self.identity or metadata.get("format") != FORMAT:
                raise ValueError("stale: written for another model or format")
            if metadata["tokens"] != ",".join(str(t) for t in key):
                raise ValueError("its tokens are not its key")
            chunks = [(name, _array_bytes(array)) for name, array in arrays.items()]
            if _checksum(metadata["tokens"], chunks) != metadata["checksum"]:
                raise ValueError("checksum mismatch")
            cache = self._rebuilt(arrays, metadata)
        except Exception as exc:  # any damage: never served
            self._entries.pop(key)
            self.nbytes -= entry.nbytes
            self._drop(entry.path, str(exc))
            return None
        self.hits += 1
        self._touch(key)
        return cache

    @staticmethod
    def _rebuilt(arrays: dict[str, mx.array], metadata: dict[str, str]) -> list[Any]:
        flat = [*arrays.items(), *json.loads(metadata["scalars"]).items()]
        layers = tree_unflatten(flat)
        classes = json.loads(metadata["classes"])
        if len(layers) != len(classes):
            raise ValueError("layer count does not match")
        cache = []
        for name, state in zip(classes, layers, strict=True):
            cache.append(CLASSES[name].from_state(state))
        return cache

    def close(self) -> None:
        """Finish the file work submitted (the engine unloads)."""
        if self._writer is not None:
            self._writer.close()

    def _do(self, operation: Callable[[], None], nbytes: int = 0) -> None:
        """File work: on the writer's thread, in order, or here when there is none."""
        if self._writer is None:
            operation()
        else:
            self._writer.submit(operation, nbytes)

    def _touch(self, key: tuple[int, ...]) -> None:
        self._entries.move_to_end(key)
        self._do(partial(os.utime, self._entries[key].path))

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes and self._entries:
            _, entry = self._entries.popitem(last=False)
            self.nbytes -= entry.nbytes
            self._do(partial(entry.path.unlink, missing_ok=True))

    def _drop(self, path: Path, why: str) -> None:
        self.dropped += 1
        logger.warning("prefix cache entry %s dropped: %s", path.name, why)
        self._do(partial(path.unlink, missing_ok=True))
