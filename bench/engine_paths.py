"""Where a batch's decode time goes between raw mlx-lm and mlxd's engine, in one process, greedy:
the same `--rows` chat prompts (bench/concurrency.py's) decoded `--tokens` tokens each by

- `raw`: mlx-lm's BatchGenerator (every prompt in one batch), on this thread;
- `scheduler`: mlxd's Scheduler (the engine's, built by `LLMEngine.load`) stepped on this
  thread, on MLX's default stream — no engine thread, no event loop;
- `engine`: the LLMEngine on its own thread and stream, its events consumed by an asyncio loop
  in this thread, as the server runs it (no HTTP).

Decode rate = tokens after every row has its first token / time from then to the last token.
Rounds alternate the three so drift hits all of them; medians and min–max. If `scheduler` is
level with `raw` and `engine` is not, the cost is in the thread hand-off (events, the loop,
the GIL); if `scheduler` is already slower, it is in the step itself.

    python bench/engine_paths.py [--model NAME_OR_DIR] [--rows 8] [--tokens 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import attention_backend, blas

blas.preload_from_env()
attention_backend.prefer_shape_generic_attention()  # as `mlxd serve` does (raw runs under it too)

import mlx.core as mx  # noqa: E402
from mlx_lm.generate import BatchGenerator  # noqa: E402

from bench.concurrency import prompt  # noqa: E402
from engines.llm.engine import LLMEngine  # noqa: E402
from engines.types import (  # noqa: E402
    ChatLimits,
    Event,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from engines.weights.store import ModelStore, default_home  # noqa: E402


class Clock:
    """When every row had its first token, and how many tokens came after that."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.started: set[int] = set()
        self.since: float | None = None
        self.after = 0
        self.last = 0.0

    def token(self, row: int, count: int = 1) -> None:
        now = time.perf_counter()
        if self.since is not None:
            self.after += count
        self.started.add(row)
        if self.since is None and len(self.started) == self.rows:
            self.since = now
        self.last = now

    @property
    def rate(self) -> float:
        assert self.since is not None
        return self.after / max(self.last - self.since, 1e-9)


class Sink:
    def __init__(self, row: int, clock: Clock) -> None:
        self.row, self.clock = row, clock
        self.cancelled = False
        self.done = False

    def push(self, event: Event) -> None:
        if isinstance(event, TokenEvent) and event.token_ids:
            self.clock.token(self.row, len(event.token_ids))
        elif isinstance(event, FinishEvent) or getattr(event, "ends_stream", False):
            self.done = True


def run_raw(model: Any, prompts: list[list[int]], tokens: int) -> float:
    rows = len(prompts)
    generator = BatchGenerator(
        model, max_tokens=tokens, stop_tokens=[[-1]], completion_batch_size=max(32, rows)
    )
    uids = generator.insert(prompts, max_tokens=[tokens] * rows)
    index = {uid: i for i, uid in enumerate(uids)}
    clock = Clock(rows)
    while responses := generator.next_generated():
        for response in responses:
            clock.token(index[response.uid])
    generator.close()
    return clock.rate


def requests(prompts: list[list[int]], tokens: int, tag: str) -> list[GenerationRequest]:
    greedy = SamplingParams(temperature=0.0)
    return [GenerationRequest(f"{tag}{i}", p, tokens, greedy) for i, p in enumerate(prompts)]


def run_scheduler(engine: LLMEngine, prompts: list[list[int]], tokens: int, tag: str) -> float:
    scheduler = engine.scheduler
    assert scheduler is not None
    clock = Clock(len(prompts))
    for i, request in enumerate(requests(prompts, tokens, tag)):
        scheduler.insert(request, Sink(i, clock))
    while scheduler.has_work():
        scheduler.step()
    return clock.rate


async def run_engine(engine: LLMEngine, prompts: list[list[int]], tokens: int, tag: str) -> float:
    clock = Clock(len(prompts))

    async def consume(row: int, request: GenerationRequest) -> None:
        async for event in engine.submit(request):
            if isinstance(event, TokenEvent) and event.token_ids:
                clock.token(row, len(event.token_ids))
            elif isinstance(event, FinishEvent):
                return

    await asyncio.gather(*(consume(i, r) for i, r in enumerate(requests(prompts, tokens, tag))))
    return clock.rate


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.model)
    if not path.is_dir():
        path = ModelStore(default_home()).path_for(args.model)
    limits = ChatLimits(warmup_rows=0, prefix_cache_bytes=0)
    on_thread = LLMEngine("paths-thread", path, limits=limits)
    on_thread.start()
    await on_thread.wait_loaded()
    here = LLMEngine("paths-here", path, limits=limits)
    here.load()  # its model and scheduler, built and stepped on this thread
    assert here.scheduler is not None
    model = here.scheduler.model
    prompts = [here.encode_chat(prompt(i)) for i in range(args.rows)]
    rates: dict[str, list[float]] = {"raw": [], "scheduler": [], "engine": []}
    run_raw(model, prompts, 8)  # kernels planned for these shapes on every path
    run_scheduler(here, prompts, 8, "w")
    await run_engine(on_thread, prompts, 8, "w")
    try:
        for round_index in range(args.rounds):
            rates["raw"].append(run_raw(model, prompts, args.tokens))
            rates["scheduler"].append(run_scheduler(here, prompts, args.tokens, f"s{round_index}"))
            rates["engine"].append(
                await run_engine(on_thread, prompts, args.tokens, f"e{round_index}")
            )
            print(json.dumps({name: round(v[-1], 1) for name, v in rates.items()}), flush=True)
    finally:
        on_thread.stop()
    return {
        "machine": f"{platform.machine()} {platform.system()}",
        "device": str(mx.default_device()),
        "model": str(path),
        "rows": args.rows,
        "tokens": args.tokens,
        "rates": rates,
        "summary": {name: spread(values) for name, values in rates.items()},
        "scheduler_vs_raw": statistics.median(rates["scheduler"]) / statistics.median(rates["raw"]),
        "engine_vs_raw": statistics.median(rates["engine"]) / statistics.median(rates["raw"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/engine_paths.json"))
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print(json.dumps(report["summary"]))
    ratios = (report["scheduler_vs_raw"], report["engine_vs_raw"])
    print("scheduler/raw {:.2f}, engine/raw {:.2f}".format(*ratios))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
