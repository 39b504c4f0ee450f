"""The longest common prefix of two token sequences, at C speed: the prefix caches compare every
prompt with every entry's tokens, and agent prompts share prefixes of ~10k tokens (a system
prompt and tools), where an element-by-element Python loop costs about a millisecond per entry
on the engine thread."""

from __future__ import annotations

from collections.abc import Sequence

BLOCK = 256  # tokens compared at once; the first block that differs is walked element by element


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    first, second = tuple(a), tuple(b)  # equal types: slices compare in C
    limit = min(len(first), len(second))
    index = 0
    while index + BLOCK <= limit and first[index : index + BLOCK] == second[index : index + BLOCK]:
        index += BLOCK
    while index < limit and first[index] == second[index]:
        index += 1
    return index
