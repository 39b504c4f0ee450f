"""Kernel warm-up of a freshly loaded chat engine, in the background.

MLX's CUDA backend plans kernels per shape on first use, several per forward pass
(docs/benchmarks.md, "Measurements behind the code"): the first burst of users on a fresh server
meets decode steps at every batch width and prefill passes at new lengths, and pays for those plans
— on the H200 a first 32-stream burst took several times as long as the same burst later.

The warm-up is a burst of synthetic requests given to the real scheduler right after load: `rows`
requests of a few prompt lengths, the i-th generating i + 2 tokens, so the decode batch passes
through every width from `rows` down to 1 and the scheduler forms its usual joint prefills. They
are ordinary rows whose events are dropped, so nothing in the scheduler knows about them, and a
real request that arrives meanwhile joins the same batch at the next step (it is never queued
behind the warm-up). Where kernels cost nothing to plan (the CPU), it is off by default.

Invariants: built and driven on the engine thread; every warm row is counted through `release`
like an admitted request (so admission and the KV budget stay exact) and released by the
scheduler when it finishes; the warm rows' prefix cache entries are dropped once the last row is
done (they would only crowd out real prompts); real entries are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from engines.types import Event, FinishEvent, GenerationRequest, SamplingParams

logger = logging.getLogger(__name__)

PROMPT_LENGTHS = (24, 56, 120, 250)  # a few padded prefill lengths (buckets of 32 on CUDA)
HEAD = 16  # prompt tokens that tell a warm row's prefix cache entries from real ones
GPU_ROWS = 32  # the default on a GPU: the burst width the first users are likely to bring


class DroppedEvents:
    """A warm row's sink: keeps nothing but whether the row finished (or failed)."""

    def __init__(self) -> None:
        self.done = False
        self.stop = False  # set when the engine stops: the scheduler drops the row

    @property
    def cancelled(self) -> bool:
        return self.stop

    def push(self, event: Event) -> None:
        if getattr(event, "ends_stream", False) or isinstance(event, FinishEvent):
            self.done = True


def default_rows() -> int:
    """Warm rows when the models file and settings name none: GPU_ROWS on a GPU, 0 elsewhere."""
    import mlx.core as mx

    return GPU_ROWS if mx.default_device() == mx.gpu else 0


def warm_requests(rows: int, vocab_size: int, never: frozenset[int]) -> list[GenerationRequest]:
    """`rows` greedy requests of cycling prompt lengths, the i-th asking for i + 2 tokens.
    Token ids avoid `never` (end-of-sequence ids) and are kept out of any stop set by a bias, so
    each row generates exactly the tokens it asks for."""
    usable = [t for t in range(min(vocab_size, 4096)) if t not in never]
    bias = tuple((token, -1e9) for token in sorted(never))
    requests = []
    for i in range(rows):
        length = PROMPT_LENGTHS[i % len(PROMPT_LENGTHS)]
        prompt = [usable[(i * 131 + j * 7) % len(usable)] for j in range(length)]
        sampling = SamplingParams(temperature=0.0, logit_bias=bias)
        requests.append(GenerationRequest(f"warmup-{i}", prompt, i + 2, sampling))
    return requests


class WarmUp:
    """One engine's warm-up: started once after load, polled after every step."""

    def __init__(self, name: str, rows: int) -> None:
        self.name = name
        self.rows = rows
        self._sinks: list[DroppedEvents] = []
        self._heads: set[tuple[int, ...]] = set()  # each warm prompt's first HEAD tokens
        self._started = 0.0
        self.finished_s: float | None = None  # seconds it took, once done

    @property
    def running(self) -> bool:
        return bool(self._sinks)

    def start(
        self,
        scheduler: Any,
        release: Callable[[int, int], None],
        vocab_size: int,
        never: frozenset[int],
    ) -> None:
        """Give the scheduler the warm rows (engine thread)."""
        if self.rows <= 0:
            return
        self._started = time.monotonic()
        for request in warm_requests(self.rows, vocab_size, never):
            sink = DroppedEvents()
            release(request.n, 1)  # counted as admitted, as ChatFront.admit does
            scheduler.insert(request, sink)
            self._sinks.append(sink)
            self._heads.add(tuple(request.prompt_tokens[:HEAD]))
        logger.info("engine %s: warming kernels with %d synthetic rows", self.name, self.rows)

    def poll(self, scheduler: Any) -> None:
        """After a step: once every warm row is done, drop their prefix cache entries."""
        if not self._sinks or not all(sink.done for sink in self._sinks):
            return
        self._sinks = []
        if scheduler.prefix_cache is not None:
            heads = self._heads
            scheduler.prefix_cache.discard_if(lambda tokens: tuple(tokens[:HEAD]) in heads)
        self.finished_s = time.monotonic() - self._started
        logger.info("engine %s: kernel warm-up done in %.1f s", self.name, self.finished_s)

    def abandon(self) -> None:
        """The engine is stopping: the scheduler drops the warm rows at its next step."""
        for sink in self._sinks:
            sink.stop = True
