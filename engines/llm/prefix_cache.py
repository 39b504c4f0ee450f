"""PrefixCache: caches of earlier sequences, reused for prompts that start the same way.

Multi-turn chat resends the whole history each turn, agents resend long system prompts: the
longest cached token prefix of a new prompt is copied instead of recomputed. Entries are
single-sequence mlx-lm caches keyed by the exact tokens they hold.

Caches that can be trimmed back (plain KV) serve any common prefix. Those that cannot (a full
sliding window, SSM / linear-attention state) serve only prompts that extend their whole key, so
the engine also keeps snapshots at reusable points: each prompt but its last token, taken when its
prefill ends (the next turn of a conversation starts with this turn's prompt), and each finished
sequence (prompt and output).

Invariants (engine thread only): total bytes ≤ `max_bytes` and entries ≤ `max_entries`, evicting
the least recently used; a lookup never returns the whole prompt (at least one token is left to
compute, since its logits are needed) and never trims a cache that cannot be trimmed; a returned
cache is a copy the caller owns; an entry is dropped as redundant only for a trimmable one that
extends it.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engines.llm import caches
from engines.llm.disk_cache import DiskPrefixCache
from engines.llm.token_prefix import common_prefix_length


@dataclass
class _Entry:
    cache: list[Any]
    nbytes: int
    trimmable: bool


class PrefixCache:
    def __init__(
        self,
        max_bytes: int,
        max_entries: int = 64,
        min_tokens: int = 16,
        disk: DiskPrefixCache | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.disk = disk  # where evicted entries go, and come back from
        self._awaited: tuple[int, ...] | None = None  # the disk entry `ready` last waited for
        self.max_entries = max_entries
        self.min_tokens = min_tokens  # shorter matches are not worth a copy
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: list[int]) -> tuple[list[Any] | None, int]:
        """(a private copy of the best cache trimmed to the reused length, reused tokens)."""
        if self.disk is not None:
            self._recall(prompt)
        best_key: tuple[int, ...] | None = None
        best = 0
        wanted = tuple(prompt)  # once: every entry compares with it
        for key, entry in self._entries.items():
            length = min(common_prefix_length(key, wanted), len(prompt) - 1)
            if length < len(key) and not entry.trimmable:
                continue  # it would have to be trimmed back to `length`: it cannot
            if length > best:
                best_key, best = key, length
        if best_key is None or best < self.min_tokens:
            self.misses += 1
            return None, 0
        self._entries.move_to_end(best_key)
        cache = copy.deepcopy(self._entries[best_key].cache)
        if best < len(best_key):  # a trimmable entry: the part past the common prefix goes
            excess = caches.offset(cache) - best
            for layer in cache:
                layer.trim(excess)
        self.hits += 1
        return cache, best

    def ready(self, prompt: list[int]) -> bool:
        """False while the disk entry that would serve `prompt` better than memory is being read
        on the disk's own thread (the read starts here if it has not); True once `lookup` can
        answer without waiting for the disk. Reads finished meanwhile go into memory first.
        Always True without a disk, or with one that reads on the caller's thread."""
        if self.disk is None or not self.disk.reads_in_background:
            return True
        self.take_finished_reads()
        if self._awaited is not None and self.disk.reading(self._awaited):
            return False  # still on its way: not worth comparing every entry again each step
        key = self._awaited = self._wanted_from_disk(prompt)
        if key is None:
            return True
        if not self.disk.reading(key):
            self.disk.start_read(key)
        return False

    def take_finished_reads(self) -> None:
        """Put the disk's finished background reads into memory (sound ones; unsound ones are
        dropped there)."""
        assert self.disk is not None
        for key, cache in self.disk.finished_reads():
            if cache is not None:
                self.insert(list(key), cache)

    def _recall(self, prompt: list[int]) -> None:
        """Bring the disk's best entry for `prompt` back into memory if it serves a longer
        prefix than any entry in memory (a corrupt or stale one is dropped there, not served)."""
        assert self.disk is not None
        if self.disk.reads_in_background:
            self.take_finished_reads()
        key = self._wanted_from_disk(prompt)
        if key is not None:
            cache = self.disk.load(key)
            if cache is not None:
                self.insert(list(key), cache)

    def _wanted_from_disk(self, prompt: list[int]) -> tuple[int, ...] | None:
        """The disk entry that serves a longer prefix of `prompt` than any in memory, if any."""
        assert self.disk is not None
        key, length = self.disk.best(prompt, len(prompt) - 1)
        if key is None or length < self.min_tokens or key in self._entries:
            return None
        wanted = tuple(prompt)
        in_memory = max(
            (min(common_prefix_length(k, wanted), len(prompt) - 1) for k in self._entries),
            default=0,
        )
        return key if length > in_memory else None

    def insert(self, tokens: list[int], cache: list[Any]) -> None:
        """Keep `cache` (holding exactly `tokens`); drop entries it makes redundant, then evict."""
        if len(tokens) < self.min_tokens:
            return
        key = tuple(tokens)
        nbytes = caches.nbytes(cache)
        if key in self._entries:  # the same tokens again: only its recency changes
            self._entries.move_to_end(key)
            return
        if nbytes > self.max_bytes:
            return
        # Computed at once: an extracted row is a lazy copy, and until it is computed it keeps the
        # whole batch's KV buffers alive (docs/benchmarks.md, "Measurements behind the code").
        # Launched, not waited for: on a GPU a wait per finished row stalled a 256-row batch
        # (~20% of the engine thread's time in a 256-client burst on an H200).
        caches.launch(cache)
        trimmable = caches.trimmable(cache)
        if trimmable:  # it serves every prefix its shorter entries served
            for other in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
                self.nbytes -= self._entries.pop(other).nbytes
        self._entries[key] = _Entry(cache, nbytes, trimmable)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes or len(self._entries) > self.max_entries:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
            if self.disk is not None:  # spilled, so it can come back
                self.disk.save(evicted_key, evicted.cache)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def discard_if(self, unwanted: Callable[[tuple[int, ...]], bool]) -> None:
        """Forget (without spilling) the entries whose tokens `unwanted` names."""
        for key in [k for k in self._entries if unwanted(k)]:
            self.nbytes -= self._entries.pop(key).nbytes

    def close(self) -> None:
        """Spill every entry to disk (if any) and finish writing them, then forget them (the
        engine unloads)."""
        if self.disk is not None:
            for key, entry in self._entries.items():
                self.disk.save(key, entry.cache)
            self.disk.close()
        self.clear()
