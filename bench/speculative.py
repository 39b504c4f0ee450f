"""Speculative decoding (prompt lookup, or a draft model) on a coding request: with vs without,
same engine code, same model, greedy, in one process.

Two LLMEngines load the same model, one with `speculative = "prompt_lookup"` (or, with
`--draft NAME`, that draft model: `speculative = "NAME"`), on their own threads (as the server
runs them). Each run sends `--concurrency` requests at once, each asking
the model to repeat a ~400-token Python module with one change (`--task edit`), or to write new
code (`--task write`: a small module from a description); runs alternate between the two
engines (plain, speculative, speculative, plain, ...) so drift hits both. With `--one-engine`
both sides are one speculative engine, the plain side's requests asking `speculative: false`
(the same code path as an engine without drafting: its rows never draft), so large models are
loaded once. Reported per side:
decode rate = tokens after the first / (last token time − first token time), for one stream, or
aggregate over the concurrent ones (from the last first-token to the last token), medians with
min–max; and whether the speculative tokens equal the plain ones (they must, greedy).

    python3 bench/speculative.py --model NAME_OR_DIR [--runs 5] [--tokens 256]
        [--concurrency 1 8] [--speculative-tokens N] [--draft NAME_OR_DIR] [--task edit|write]
        [--prediction original|output]

`--prediction` gives the speculative side's requests a predicted output (chat's `prediction`,
Predicted Outputs), as an editor sends the file it asks to change: `original` the module as it
stands before the edit (fenced, as the model writes it), `output` the reply itself (taken from
an unmeasured plain run first: the most a prediction can give).

A draft model: e.g. `--model qwen2.5-coder-1.5b-instruct --draft qwen2.5-coder-0.5b-instruct
--concurrency 1` (issue 25: ≥ 1.5× single stream on a coding prompt, identical greedy output).

On the GPU use a random Llama-1B-shaped model (bench/random_model.py): it copies nothing, so
that figure is the cost of drafting that never pays off, unless its output loops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

BLAS = blas.preload_from_env()

import mlx.core as mx  # noqa: E402

from engines.llm.engine import LLMEngine  # noqa: E402
from engines.types import ChatLimits, FinishEvent, GenerationRequest, SamplingParams, TokenEvent  # noqa: E402
from engines.weights.store import ModelStore, default_home  # noqa: E402

CODE = """import json
import os
from dataclasses import dataclass, field


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 1
    tags: list[str] = field(default_factory=list)

    def total(self) -> float:
        return self.price * self.quantity


class Inventory:
    def __init__(self, path: str) -> None:
        self.path = path
        self.items: dict[str, Item] = {}

    def load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as handle:
            for raw in json.load(handle):
                item = Item(raw["name"], raw["price"], raw.get("quantity", 1), raw.get("tags", []))
                self.items[item.name] = item

    def save(self) -> None:
        with open(self.path, "w") as handle:
            json.dump([vars(item) for item in self.items.values()], handle, indent=2)

    def add(self, item: Item) -> None:
        if item.name in self.items:
            self.items[item.name].quantity += item.quantity
        else:
            self.items[item.name] = item

    def remove(self, name: str, quantity: int = 1) -> bool:
        item = self.items.get(name)
        if item is None or item.quantity < quantity:
            return False
        item.quantity -= quantity
        if item.quantity == 0:
            del self.items[name]
        return True

    def value(self) -> float:
        return sum(item.total() for item in self.items.values())

    def tagged(self, tag: str) -> list[Item]:
        return [item for item in self.items.values() if tag in item.tags]
"""

CHANGES = [
    ("value", "total_value"),
    ("tagged", "with_tag"),
    ("remove", "take_out"),
    ("add", "put"),
    ("load", "read"),
    ("save", "write"),
    ("Inventory", "Stock"),
    ("Item", "Product"),
]


# `--task write`: new code, nothing to copy but the names the request gives.
WRITE_TASKS = [
    "a Python module with a dataclass `Item` (name, price, quantity) and a class `Inventory` "
    "that loads items from a JSON file, saves them back, adds, removes and totals them",
    "a Python function that parses a CSV file of transactions (date, account, amount) and "
    "returns the balance per account and per month, with type hints and docstrings",
    "a Python LRU cache class with get, put and a maximum size, without functools, with tests",
    "a Python command-line tool (argparse) that counts words, lines and characters in files",
]


def request_messages(index: int, task: str = "edit") -> list[dict[str, str]]:
    if task == "write":
        ask = f"Write {WRITE_TASKS[index % len(WRITE_TASKS)]}. Reply with the code only."
        return [{"role": "user", "content": ask}]
    old, new = CHANGES[index % len(CHANGES)]
    ask = (
        f"```python\n{CODE}```\n\nRepeat the code above exactly, line by line, with one "
        f"change: rename `{old}` to `{new}`. Reply with the code only."
    )
    return [{"role": "user", "content": ask}]


async def one(engine: LLMEngine, request: GenerationRequest) -> tuple[list[int], float, float]:
    tokens: list[int] = []
    first = last = 0.0
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent) and event.token_ids:
            last = time.perf_counter()
            first = first or last
            tokens += event.token_ids
        elif isinstance(event, FinishEvent):
            break
    return tokens, first, last


async def burst(
    side: Side,
    prompts: list[list[int]],
    max_tokens: int,
    predictions: list[tuple[int, ...]] | None = None,
) -> tuple[float, list[list[int]]]:
    """Decode rate of one burst (tokens/s over the concurrent requests) and their tokens."""
    engine, speculative = side
    predicted = predictions or [() for _ in prompts]
    requests = [
        GenerationRequest(
            f"r{i}",
            prompt,
            max_tokens,
            SamplingParams(0.0),
            speculative=speculative,
            prediction=prediction,
        )
        for i, (prompt, prediction) in enumerate(zip(prompts, predicted, strict=True))
    ]
    results = await asyncio.gather(*(one(engine, r) for r in requests))
    decoded = sum(max(0, len(tokens) - 1) for tokens, _, _ in results)
    start = max(first for _, first, _ in results)
    end = max(last for _, _, last in results)
    return decoded / max(end - start, 1e-9), [tokens for tokens, _, _ in results]


# A side of the comparison: an engine, and the requests' per-request switch (None: as the
# engine is configured; False: no drafting on a speculative engine).
Side = tuple[LLMEngine, bool | None]


def counts(engine: LLMEngine) -> tuple[int, int, int, int]:
    """(tokens generated, row-passes, drafted, kept) so far."""
    stats = engine.stats()
    return (
        stats.tokens_generated,
        stats.decode_row_steps,
        stats.drafted_tokens,
        stats.accepted_drafts,
    )


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


async def predicted_outputs(
    args: argparse.Namespace, plain: Side, prompts: list[list[int]], requests: int
) -> list[tuple[int, ...]]:
    """Each request's `--prediction` (none without the option)."""
    engine = plain[0]
    if args.prediction == "original":
        fenced = engine.encode_output(f"```python\n{CODE}```")
        return [tuple(fenced)] * requests
    if args.prediction == "output":
        outputs = [(await burst(plain, [prompt], args.tokens))[1][0] for prompt in prompts]
        return [tuple(tokens) for tokens in outputs]
    return [()] * requests


async def measure(args: argparse.Namespace, path: Path, draft: Path | None) -> dict[str, object]:
    speculative = ChatLimits(
        speculative=str(draft) if draft else "prompt_lookup",
        speculative_tokens=args.speculative_tokens,
    )
    drafting = LLMEngine("speculative", path, limits=speculative)
    if args.one_engine:  # the plain side: the same engine, each request with drafting off
        sides: dict[str, Side] = {"plain": (drafting, False), "speculative": (drafting, None)}
    else:
        plain = LLMEngine("plain", path, limits=ChatLimits())
        sides = {"plain": (plain, None), "speculative": (drafting, None)}
    engines = {id(engine): engine for engine, _ in sides.values()}.values()
    for engine in engines:
        engine.start()
        await engine.wait_loaded()
    report: dict[str, object] = {}
    try:
        for concurrency in args.concurrency:
            # One stream: each run another request (a rename of another name), so the figure
            # is not one request's; N streams: N different requests at once, every run.
            requests = len(CHANGES) if concurrency == 1 else concurrency
            every = [drafting.encode_chat(request_messages(i, args.task)) for i in range(requests)]
            rates: dict[str, list[float]] = {name: [] for name in sides}
            outputs: dict[str, list[list[int]]] = {}
            identical = True  # every run: the speculative side's tokens equal the plain side's
            lengths: list[int] = []  # tokens per request, over the runs
            prompts = every[:concurrency]
            await burst(sides["plain"], prompts, 8)  # warm both sides on these shapes
            await burst(sides["speculative"], prompts, 8)
            predictions = await predicted_outputs(args, sides["plain"], every, requests)
            speculated = [0, 0, 0, 0]  # counts() over the measured speculative bursts
            for run in range(args.runs):
                if concurrency == 1:
                    prompts = [every[run % len(every)]]
                order = ["plain", "speculative"] if run % 2 == 0 else ["speculative", "plain"]
                for name in order:
                    before = counts(drafting)
                    asked = [predictions[every.index(p)] for p in prompts]
                    given = asked if name == "speculative" and args.prediction else None
                    rate, tokens = await burst(sides[name], prompts, args.tokens, given)
                    if name == "speculative":
                        after = counts(drafting)
                        speculated = [
                            s + a - b for s, a, b in zip(speculated, after, before, strict=True)
                        ]
                    rates[name].append(rate)
                    outputs[name] = tokens
                identical = identical and outputs["plain"] == outputs["speculative"]
                lengths += [len(t) for t in outputs["plain"]]
            generated, row_passes, drafted, kept = speculated
            report[f"concurrency_{concurrency}"] = {
                "prompt_tokens": [len(p) for p in prompts],
                "output_tokens": lengths,
                "ratio_per_run": [
                    round(fast / slow, 2)
                    for fast, slow in zip(rates["speculative"], rates["plain"], strict=True)
                ],
                "plain_tok_s": spread(rates["plain"]),
                "speculative_tok_s": spread(rates["speculative"]),
                "speedup_of_medians": round(
                    statistics.median(rates["speculative"]) / statistics.median(rates["plain"]), 2
                ),
                "identical_output": identical,
                "drafts_kept": round(kept / max(drafted, 1), 3),
                "tokens_per_row_pass": round(generated / max(row_passes, 1), 2),
            }
            print(json.dumps({f"concurrency_{concurrency}": report[f"concurrency_{concurrency}"]}))
            if args.show_text:
                print(drafting.decode(outputs["plain"][0]))
    finally:
        for engine in engines:
            engine.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--speculative-tokens", type=int, default=0, help="most drafts per step (0: the default)"
    )
    parser.add_argument("--draft", help="a draft model (store name or directory)")
    parser.add_argument("--task", choices=["edit", "write"], default="edit")
    parser.add_argument(
        "--one-engine",
        action="store_true",
        help="one engine for both sides (the plain side: requests with drafting off): the "
        "weights in memory once, for models too large to load twice",
    )
    parser.add_argument("--prediction", choices=["original", "output"])
    parser.add_argument("--show-text", action="store_true")
    args = parser.parse_args()
    store = ModelStore(default_home())
    _, path = store.resolve(args.model)
    draft = store.resolve(args.draft)[1] if args.draft else None
    report = asyncio.run(measure(args, path, draft))
    machine = {
        "device": str(mx.default_device()),
        "platform": platform.platform(),
        "blas": str(BLAS),
        "model": str(path),
        "runs": args.runs,
        "max_tokens": args.tokens,
        "speculative_tokens": args.speculative_tokens,
        "drafter": str(draft) if draft else "prompt_lookup",
        "task": args.task,
        "one_engine": args.one_engine,
        "prediction": args.prediction,
    }
    print(json.dumps({"machine": machine, **report}, indent=2))


if __name__ == "__main__":
    main()
    # End as `mlxd` does (server/__main__.py `entry`): without interpreter finalization, which
    # on CUDA aborted this process after its report ("terminate called without an active
    # exception", a collection on another thread while MLX's per-thread state was torn down).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
