"""Quantized KV cache (`kv_bits`): greedy agreement with the unquantized cache, and how many
4k-token requests the admission budget holds, on a real model (default: the embedded SmolLM2).

    python bench/kv_quant.py [--model NAME_OR_DIR] [--tokens 96] [--budget-mb 1024]

Agreement, two ways: free-running, for each prompt, greedy tokens with `kv_bits` vs without; a
token agrees when every token before it (and it) is the same (after a first difference the texts
diverge, so later positions are not compared). Teacher-forced, the quantized engine scores the
unquantized output (`prompt_logprobs`): a token agrees when it is the quantized model's top choice
given the same preceding text — the per-token measure, without the divergence cascading.
Rows: requests of 4,096 tokens that fit the same KV budget, from
the profile the engine measured on its real caches (the figure admission uses).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

BLAS = blas.preload_from_env()

from engines.llm.engine import LLMEngine  # noqa: E402
from engines.types import (  # noqa: E402
    ChatLimits,
    FinishEvent,
    GenerationRequest,
    PromptEvent,
    SamplingParams,
    TokenEvent,
)
from engines.weights.store import ModelStore, default_home  # noqa: E402

QUESTIONS = [
    "Explain how a hash map handles collisions.",
    "Write a Python function that reverses a linked list.",
    "What causes the seasons on Earth?",
    "Summarise the plot of Romeo and Juliet in a paragraph.",
    "Give three tips for writing clear commit messages.",
    "How does TCP differ from UDP?",
    "Describe the water cycle for a ten-year-old.",
    "What is the difference between a process and a thread?",
]


async def greedy(engine: LLMEngine, prompt: list[int], tokens: int) -> list[int]:
    request = GenerationRequest("q", prompt, tokens, SamplingParams(temperature=0.0))
    out: list[int] = []
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent):
            out += event.token_ids
        elif isinstance(event, FinishEvent):
            break
    return out


async def forced(engine: LLMEngine, prompt: list[int], reference: list[int]) -> int:
    """Positions of `reference` (after `prompt`) that are the engine's greedy choice."""
    request = GenerationRequest(
        "f",
        prompt + reference,
        0,
        SamplingParams(temperature=0.0),
        logprobs=1,
        prompt_logprobs=True,
    )
    async for event in engine.submit(request):
        if isinstance(event, PromptEvent):
            scored = event.logprobs[len(prompt) :]
            return sum(bool(e.top) and e.top[0][0] == e.token for e in scored)
    raise AssertionError("no prompt logprobs")


async def outputs(
    path: Path, bits: int | None, tokens: int, budget: int, plain: list[list[int]] | None
) -> tuple[list[list[int]], int, int]:
    limits = ChatLimits(kv_bits=bits, kv_budget_bytes=budget, prefix_cache_bytes=0)
    engine = LLMEngine("m", path, limits=limits)
    engine.start()
    await engine.wait_loaded()
    try:
        prompts = [engine.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
        results = [await greedy(engine, prompt, tokens) for prompt in prompts]
        agree = 0
        for prompt, reference in zip(prompts, plain or results, strict=True):
            agree += await forced(engine, prompt, reference)
        assert engine.profile is not None
        return results, budget // engine.profile.row_bytes(4096), agree
    finally:
        engine.stop()


def agreeing(reference: list[int], other: list[int]) -> int:
    same = 0
    for a, b in zip(reference, other, strict=False):
        if a != b:
            break
        same += 1
    return same


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--budget-mb", type=int, default=1024)
    args = parser.parse_args()
    _, path = ModelStore(default_home()).resolve(args.model)
    budget = args.budget_mb * 2**20
    print(f"# {args.model} on {platform.machine()} ({BLAS.library or 'reference BLAS'})")
    plain, plain_rows, own = await outputs(path, None, args.tokens, budget, None)
    total = sum(len(tokens) for tokens in plain)
    print(
        f"unquantized: {plain_rows} rows of 4096 tokens in {args.budget_mb} MiB; "
        f"teacher-forced self-agreement {own}/{total}",
        flush=True,
    )
    for bits in (8, 4):
        quantized, rows, forced_agree = await outputs(path, bits, args.tokens, budget, plain)
        agree = sum(agreeing(p, q) for p, q in zip(plain, quantized, strict=True))
        identical = sum(p == q for p, q in zip(plain, quantized, strict=True))
        print(
            f"kv_bits {bits}: {rows} rows ({rows / plain_rows:.2f}x); greedy agreement "
            f"{agree}/{total} tokens = {agree / total:.1%}; "
            f"{identical}/{len(plain)} outputs identical; teacher-forced "
            f"{forced_agree}/{total} = {forced_agree / total:.1%}",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
