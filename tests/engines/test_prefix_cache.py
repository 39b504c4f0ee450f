"""PrefixCache with caches that can and cannot be trimmed back (fake layers, no model)."""

from __future__ import annotations

from typing import Any

from engines.llm.prefix_cache import PrefixCache


class Layer:
    """A single-sequence layer cache holding `offset` tokens; trimmable or not."""

    def __init__(self, offset: int, trimmable: bool) -> None:
        self.offset = offset
        self._trimmable = trimmable
        self.state: list[Any] = []

    def is_trimmable(self) -> bool:
        return self._trimmable

    def trim(self, n: int) -> int:
        assert self._trimmable, "trimmed a cache that cannot be trimmed"
        self.offset -= n
        return n

    @property
    def nbytes(self) -> int:
        return 8 * self.offset


def tokens(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def test_a_cache_that_cannot_be_trimmed_serves_only_prompts_extending_its_whole_key() -> None:
    cache = PrefixCache(max_bytes=2**20)
    cache.insert(tokens(30), [Layer(30, trimmable=False)])
    found, reused = cache.lookup(tokens(25) + [999] * 10)  # shares 25 tokens: would need a trim
    assert found is None and reused == 0
    found, reused = cache.lookup(tokens(40))  # extends all 30
    assert found is not None and reused == 30 and found[0].offset == 30
    found, reused = cache.lookup(tokens(30))  # the same prompt: one token must be left
    assert found is None


def test_a_trimmable_cache_serves_any_common_prefix_and_replaces_its_prefixes() -> None:
    cache = PrefixCache(max_bytes=2**20)
    cache.insert(tokens(20), [Layer(20, trimmable=True)])
    cache.insert(tokens(30), [Layer(30, trimmable=True)])
    assert len(cache) == 1  # the 20-token entry is a prefix of the trimmable 30-token one
    found, reused = cache.lookup([*tokens(25), 999])
    assert found is not None and reused == 25 and found[0].offset == 25


def test_snapshots_that_cannot_be_trimmed_are_all_kept() -> None:
    cache = PrefixCache(max_bytes=2**20)
    cache.insert(tokens(20), [Layer(20, trimmable=False)])  # a prompt's snapshot
    cache.insert(tokens(30), [Layer(30, trimmable=False)])  # prompt + answer
    assert len(cache) == 2
    found, reused = cache.lookup(tokens(20) + [999] * 5)  # a different answer: the snapshot
    assert found is not None and reused == 20
