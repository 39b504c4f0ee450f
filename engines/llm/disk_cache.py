"""DiskPrefixCache: prefix cache entries spilled to disk, so a long system prompt or agent history
resumes after a restart or after its entry was evicted from memory.

One safetensors file per entry under `<directory>/<model identity digest>/`: the cache's arrays,
and in its metadata the tokens it holds, whether it can be trimmed, each layer's class and
non-array state, the model identity, and a BLAKE2b checksum over tokens and array bytes. The
memory `PrefixCache` writes an entry here when it evicts it and when the engine unloads; it reads
one back when a prompt's best reusable prefix is on disk rather than in memory.

Only entries of at least MIN_TOKENS tokens are written, and only prefixes that long served.

Invariants (engine thread only): the files' total size ≤ `max_bytes`, least recently used
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import cache as mlx_lm_cache

from engines.llm import caches
from engines.llm.quantized_cache import QuantizedKV

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


def _checksum(tokens: str, arrays: dict[str, mx.array]) -> str:
    digest = hashlib.blake2b(tokens.encode(), digest_size=16)
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.asarray(arrays[name].reshape(-1).view(mx.uint8)).tobytes())
    return digest.hexdigest()


def _header(path: Path) -> dict[str, str]:
    """A safetensors file's metadata, without reading its arrays."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > 64 * 2**20:
            raise ValueError("header too large")
        metadata: dict[str, str] = json.loads(file.read(length)).get("__metadata__", {})
        return metadata


class DiskPrefixCache:
    def __init__(self, directory: Path, identity: str, max_bytes: int) -> None:
        self.directory = directory / identity
        self.identity = identity
        self.max_bytes = max_bytes
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
        for partial in self.directory.glob(f"{PARTIAL}*"):
            partial.unlink(missing_ok=True)
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
        arrays, metadata = self._serialised(tokens, cache)
        name = f"{hashlib.blake2b(metadata['tokens'].encode()).hexdigest()[:32]}.safetensors"
        partial, final = self.directory / f"{PARTIAL}{name}", self.directory / name
        mx.save_safetensors(str(partial), arrays, metadata=metadata)
        os.replace(partial, final)
        size = final.stat().st_size
        self._entries[tokens] = _OnDisk(final, size, caches.trimmable(cache))
        self.nbytes += size
        self._evict()

    def _serialised(
        self, tokens: tuple[int, ...], cache: list[Any]
    ) -> tuple[dict[str, mx.array], dict[str, str]]:
        flat: Any = tree_flatten([layer.state for layer in cache])
        arrays = {name: value for name, value in flat if isinstance(value, mx.array)}
        scalars = {name: value for name, value in flat if not isinstance(value, mx.array)}
        text = ",".join(str(t) for t in tokens)
        return arrays, {
            "format": FORMAT,
            "identity": self.identity,
            "tokens": text,
            "trimmable": "1" if caches.trimmable(cache) else "0",
            "classes": json.dumps([type(layer).__name__ for layer in cache]),
            "scalars": json.dumps(scalars),
            "checksum": _checksum(text, arrays),
        }

    def load(self, key: tuple[int, ...]) -> list[Any] | None:
        """The entry's cache, or None (the file dropped) if it is corrupt or stale."""
        entry = self._entries[key]
        try:
            loaded: Any = mx.load(str(entry.path), return_metadata=True)
            arrays, metadata = loaded
            if metadata.get("identity") != self.identity or metadata.get("format") != FORMAT:
                raise ValueError("stale: written for another model or format")
            if metadata["tokens"] != ",".join(str(t) for t in key):
                raise ValueError("its tokens are not its key")
            if _checksum(metadata["tokens"], arrays) != metadata["checksum"]:
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

    def _touch(self, key: tuple[int, ...]) -> None:
        self._entries.move_to_end(key)
        os.utime(self._entries[key].path)

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes and self._entries:
            _, entry = self._entries.popitem(last=False)
            self.nbytes -= entry.nbytes
            entry.path.unlink(missing_ok=True)

    def _drop(self, path: Path, why: str) -> None:
        self.dropped += 1
        logger.warning("prefix cache entry %s dropped: %s", path.name, why)
        path.unlink(missing_ok=True)
