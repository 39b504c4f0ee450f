"""DiskPrefixCache: prefix cache entries spilled to disk, so a long system prompt or agent history
resumes after a restart or after its entry was evicted from memory.

One safetensors file per entry under `<directory>/<model identity digest>/`: the cache's arrays,
and in its metadata the tokens it holds, whether it can be trimmed, each layer's class and
non-array state, the model identity, and a BLAKE2b checksum over tokens and array bytes. The
memory `PrefixCache` writes an entry here when it evicts it and when the engine unloads; it reads
one back when a prompt's best reusable prefix is on disk rather than in memory. Given a
`DiskWorker`, the file work (checksum, write, rename, touch, delete) runs on its thread: the
engine thread only copies an entry's arrays to bytes and lays out its header (so it knows the
file's exact size); a read either runs there too (`start_read`, handed over by
`finished_reads`, after the writes submitted before it) or, through `load`, on the caller's
thread once those writes are done. The file format is `entry_file`'s.

Only entries of at least MIN_TOKENS tokens are written, and only prefixes that long served.

Invariants (engine thread only, but for the worker's file operations): the files' total size
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
import queue
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import cache as mlx_lm_cache

from engines.llm import caches, entry_file
from engines.llm.disk_worker import DiskWorker
from engines.llm.quantized_cache import QuantizedKV
from engines.llm.token_prefix import common_prefix_length

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
        self, directory: Path, identity: str, max_bytes: int, worker: DiskWorker | None = None
    ) -> None:
        self.directory = directory / identity
        self.identity = identity
        self.max_bytes = max_bytes
        self._worker = worker  # None: file work on the caller's thread
        self._reading: set[tuple[int, ...]] = set()  # keys read on the worker's thread now
        # (key, verified read or why not) from the worker's thread to the engine's
        self._read_results: queue.SimpleQueue[tuple[tuple[int, ...], Any]] = queue.SimpleQueue()
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
        wanted = tuple(prompt[:usable])
        for key, entry in self._entries.items():
            length = common_prefix_length(key, wanted)
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
            "checksum": entry_file.CHECKSUM_PLACEHOLDER,
        }
        laid_out = [(name, array, entry_file.array_bytes(array)) for name, array in arrays]
        header = entry_file.header(laid_out, metadata)
        chunks = [(name, data) for name, _, data in laid_out]
        data_bytes = sum(len(data) for _, data in chunks)
        name = f"{hashlib.blake2b(text.encode()).hexdigest()[:32]}.safetensors"
        temporary, final = self.directory / f"{PARTIAL}{name}", self.directory / name
        self._do(partial(entry_file.write, temporary, final, header, text, chunks), data_bytes)
        size = len(header) + data_bytes
        self._entries[tokens] = _OnDisk(final, size, caches.trimmable(cache))
        self.nbytes += size
        self._evict()

    def load(self, key: tuple[int, ...]) -> list[Any] | None:
        """The entry's cache, read here, or None (the file dropped) if it is corrupt or stale."""
        if self._worker is not None:
            self._worker.flush()  # its file may still be on its way
        try:
            read: entry_file.Read | Exception = self._read(key, self._entries[key].path)
        except Exception as exc:  # any damage: never served
            read = exc
        return self._served(key, read)

    @property
    def reads_in_background(self) -> bool:
        """Whether `start_read` may be used (there is a worker thread to read on)."""
        return self._worker is not None

    def reading(self, key: tuple[int, ...]) -> bool:
        return key in self._reading

    def start_read(self, key: tuple[int, ...]) -> None:
        """Read and verify the entry's file on the worker's thread, after the file work
        submitted before; `finished_reads` hands it over."""
        assert self._worker is not None and key not in self._reading
        self._reading.add(key)
        self._worker.submit(partial(self._read_into_queue, key, self._entries[key].path))

    def finished_reads(self) -> list[tuple[tuple[int, ...], list[Any] | None]]:
        """The background reads done since the last call: (key, its cache or None when the
        file was unsound and is dropped, or its entry left the index meanwhile)."""
        done = []
        while not self._read_results.empty():
            key, read = self._read_results.get()
            self._reading.discard(key)
            done.append((key, self._served(key, read) if key in self._entries else None))
        return done

    def _read(self, key: tuple[int, ...], path: Path) -> entry_file.Read:
        tokens = ",".join(str(t) for t in key)
        return entry_file.read(path, self.identity, FORMAT, tokens)

    def _read_into_queue(self, key: tuple[int, ...], path: Path) -> None:
        """(The worker's thread: no MLX, no index.)"""
        try:
            result: entry_file.Read | Exception = self._read(key, path)
        except Exception as exc:
            result = exc
        self._read_results.put((key, result))

    def _served(self, key: tuple[int, ...], read: entry_file.Read | Exception) -> list[Any] | None:
        """A read's cache, or None with the entry dropped if the read failed or is unsound."""
        entry = self._entries[key]
        try:
            if isinstance(read, Exception):
                raise read
            cache = self._rebuilt(entry_file.to_arrays(read), read.metadata)
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
        if self._worker is not None:
            self._worker.close()

    def _do(self, operation: Callable[[], None], nbytes: int = 0) -> None:
        """File work: on the worker's thread, in order, or here when there is none."""
        if self._worker is None:
            operation()
        else:
            self._worker.submit(operation, nbytes)

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
