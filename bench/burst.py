"""Engine-only burst: N chat requests submitted to an in-process LLMEngine at the same instant
(no HTTP, no client threads), repeated; reports each round's TTFT p50/max, wall time and
aggregate tok/s. Tells the engine's share of a concurrency level's TTFT from the HTTP edge's
and the load generator's (bench/concurrency.py measures them all together).

    python bench/burst.py [--model NAME_OR_DIR] [--clients 32] [--tokens 128] [--rounds 3]
                          [--warmup-rows N]

Round 0 is the first burst a fresh engine meets; the kernel warm-up (engines/llm/warmup.py;
`--warmup-rows`, default: the device's) is let finish first, as when users arrive a few seconds
after the server is up, and its duration is reported. `first_vs_later` is round 0's wall time over
the median of the later rounds' (issue 25's target: at most 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import attention_backend, blas

blas.preload_from_env()
attention_backend.prefer_shape_generic_attention()  # as `mlxd serve` does

from bench.concurrency import prompt  # noqa: E402
from engines.llm.engine import LLMEngine  # noqa: E402
from engines.types import (  # noqa: E402
    ChatLimits,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from engines.weights.store import ModelStore, default_home  # noqa: E402


async def one_round(engine: LLMEngine, clients: int, tokens: int, tag: str) -> dict[str, float]:
    requests = [
        GenerationRequest(f"{tag}-{i}", engine.encode_chat(prompt(i)), tokens, SamplingParams())
        for i in range(clients)
    ]
    start = time.perf_counter()
    first: list[float] = []
    produced = 0

    async def consume(request: GenerationRequest) -> None:
        nonlocal produced
        seen = False
        async for event in engine.submit(request):
            if isinstance(event, TokenEvent):
                if not seen:
                    first.append(time.perf_counter() - start)
                    seen = True
                produced += len(event.token_ids)
            elif isinstance(event, FinishEvent):
                return

    await asyncio.gather(*(consume(r) for r in requests))
    wall = time.perf_counter() - start
    return {
        "ttft_p50_s": statistics.median(first),
        "ttft_max_s": max(first),
        "wall_s": wall,
        "aggregate_tok_s": produced / wall,
        "largest_batch": engine.largest_batch,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-rows", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/burst.json"))
    args = parser.parse_args()
    path = Path(args.model)
    if not path.is_dir():
        path = ModelStore(default_home()).path_for(args.model)
    engine = LLMEngine("bench", path, limits=ChatLimits(warmup_rows=args.warmup_rows))
    started = time.perf_counter()
    engine.start()
    await engine.wait_loaded()
    loaded_s = time.perf_counter() - started
    while engine.warmup.running:
        await asyncio.sleep(0.05)
    warmup = {"rows": engine.warmup.rows, "warmup_s": engine.warmup.finished_s, "load_s": loaded_s}
    print(json.dumps(warmup), flush=True)
    engine.largest_batch = 0
    rounds = []
    try:
        for r in range(args.rounds):
            result = await one_round(engine, args.clients, args.tokens, f"r{r}")
            print(json.dumps({"round": r, **result}), flush=True)
            rounds.append(result)
    finally:
        engine.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    later = statistics.median(r["wall_s"] for r in rounds[1:]) if len(rounds) > 1 else None
    summary = {
        "clients": args.clients,
        **warmup,
        "first_vs_later": rounds[0]["wall_s"] / later if later else None,
        "rounds": rounds,
    }
    print(json.dumps({"first_vs_later": summary["first_vs_later"]}), flush=True)
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
