"""TTFT of single requests in-process (prefix cache off), for prompt lengths never seen before
and the same lengths again: on GPUs MLX builds kernels (e.g. attention graphs) per shape on
first use, which a server pays on every new prompt length.

    python bench/ttft_shapes.py MODEL_DIR [--lengths 100,137,100,137] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import attention_backend, blas

blas.preload_from_env()
attention_backend.prefer_shape_generic_attention()  # as `mlxd serve` does

from engines.llm.engine import LLMEngine  # noqa: E402
from engines.types import FinishEvent, GenerationRequest, SamplingParams, TokenEvent  # noqa: E402

LENGTHS = (100, 137, 211, 100, 137, 211, 3000, 3001, 3000, 3017, 3001)


async def ttft(engine: LLMEngine, tokens: list[int], request_id: str) -> float:
    start = time.perf_counter()
    async for event in engine.submit(GenerationRequest(request_id, tokens, 2, SamplingParams())):
        if isinstance(event, TokenEvent | FinishEvent):  # the first token (or an at-once stop)
            return time.perf_counter() - start
    raise RuntimeError("the stream ended without a token")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--out", type=Path, default=Path("bench/results/ttft_shapes.json"))
    args = parser.parse_args()
    engine = LLMEngine("ttft", args.model)
    engine.start()
    await engine.wait_loaded()
    engine.prefix_cache = None  # every request prefills its whole prompt
    results = []
    try:
        lengths = [int(n) for n in args.lengths.split(",")]
        for i, length in enumerate(lengths):
            tokens = [(j * 7) % 1000 + 10 for j in range(length)]
            seen = length in lengths[:i]
            result = {
                "tokens": length,
                "seen_before": seen,
                "ttft_s": await ttft(engine, tokens, f"t{i}"),
            }
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        engine.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
