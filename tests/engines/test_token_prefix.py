"""common_prefix_length (engines/llm/token_prefix.py) against an element-by-element reference,
across block boundaries, for lists and tuples."""

from __future__ import annotations

import random

from engines.llm.token_prefix import BLOCK, common_prefix_length


def reference(a: list[int], b: list[int]) -> int:
    index = 0
    while index < min(len(a), len(b)) and a[index] == b[index]:
        index += 1
    return index


def test_it_agrees_with_the_reference_around_block_boundaries() -> None:
    rng = random.Random(0)
    base = [rng.randrange(50_000) for _ in range(3 * BLOCK + 17)]
    cases = [([], base), (base, base), (base[:BLOCK], base), (base, base[: 2 * BLOCK + 1])]
    for where in (0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, len(base) - 1):
        changed = list(base)
        changed[where] += 1
        cases += [(base, changed), (changed[: where + 5], base)]
    for a, b in cases:
        assert common_prefix_length(tuple(a), b) == reference(a, b)
        assert common_prefix_length(b, tuple(a)) == reference(a, b)
