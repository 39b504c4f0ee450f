"""What a CPU engine's passes cost, in one process on one model: the attention softmax from MLX
vs the native kernel (engines/llm/native_softmax.py), prompt passes as mlx-lm builds them vs
`cpu_decode.PromptPasses`, and verification passes padded vs packed (`cpu_decode.decode_step`
with `used`). Medians of interleaved repetitions; outputs are compared too (logits must be
bit-identical for the softmax and the prompt passes; the packed pass's used positions must
pick the same greedy tokens).

    python3 bench/cpu_passes.py [--model NAME_OR_DIR] [--rows 8] [--cached 600] [--repeats 5]
        [--prompts 500 2000]

Each verification row holds `--cached` tokens of a Python source (rows a few tokens apart, as a
batch's rows are); a pass of width w over `--rows` rows is timed padded (every row uses w
positions) and packed with one row using w and the others one (a row copying from its prompt
beside rows that found nothing to draft).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

BLAS = blas.preload_from_env()

import mlx.core as mx  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from engines.llm import cpu_decode, native_softmax  # noqa: E402
from engines.llm.ragged_cache import RaggedKVCache  # noqa: E402
from engines.weights.checkpoint import load_checkpoint  # noqa: E402
from engines.weights.store import ModelStore, default_home  # noqa: E402

TEXT = (Path(__file__).resolve().parent.parent / "engines" / "llm" / "scheduler.py").read_text()


def timed(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs interleaved (each warmed once first)."""
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def with_mlx_softmax(run: Callable[[], Any]) -> Callable[[], Any]:
    """`run` with every softmax left to MLX (the kernel's threshold out of reach)."""

    def wrapped() -> Any:
        threshold = native_softmax.MIN_ELEMENTS
        native_softmax.MIN_ELEMENTS = sys.maxsize
        try:
            return run()
        finally:
            native_softmax.MIN_ELEMENTS = threshold

    return wrapped


def prompt_passes(model: Any, ids: list[int], length: int, repeats: int) -> dict[str, object]:
    tokens = mx.array([ids[:length]])

    def as_mlx_lm() -> mx.array:
        cache = make_prompt_cache(model)
        logits = model(tokens, cache=cache)
        mx.eval(logits, [layer.state for layer in cache])
        return logits

    def as_prompt_passes() -> mx.array:
        cache = make_prompt_cache(model)
        logits = cpu_decode.PromptPasses(model)(tokens, cache=cache)
        mx.eval(logits, [layer.state for layer in cache])
        return logits

    identical = mx.array_equal(as_mlx_lm(), as_prompt_passes()).item()
    seconds = timed({"mlx_lm": as_mlx_lm, "prompt_passes": as_prompt_passes}, repeats)
    return {
        "tokens": length,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "speedup": round(seconds["mlx_lm"] / seconds["prompt_passes"], 2),
        "identical_logits": identical,
    }


def verification_passes(
    model: Any, ids: list[int], rows: int, cached: int, repeats: int
) -> dict[str, object]:
    singles = []
    for row in range(rows):
        cache = make_prompt_cache(model)
        mx.eval(model(mx.array([ids[: cached - 3 * row]]), cache=cache))
        singles.append(cache)
    caches = [RaggedKVCache.merge([s[i] for s in singles]) for i in range(len(singles[0]))]

    def step(width: int, used: list[int] | None = None) -> Callable[[], mx.array]:
        inputs = mx.array(
            [[ids[(row + j) % len(ids)] for j in range(width)] for row in range(rows)]
        )

        def run() -> mx.array:
            with cpu_decode.decode_step(caches[0].offset, width, used):
                logits = model(inputs, cache=caches)
            mx.eval(logits)
            for layer in caches:
                layer.rewind([width] * rows)
            return logits

        return run

    runs: dict[str, Callable[[], Any]] = {
        "plain": step(1),
        "plain_mlx_softmax": with_mlx_softmax(step(1)),
    }
    for width in (3, 5, 9):
        one_long = [width] + [1] * (rows - 1)
        runs[f"w{width}_padded"] = step(width)
        runs[f"w{width}_padded_mlx_softmax"] = with_mlx_softmax(step(width))
        runs[f"w{width}_packed_one_row"] = step(width, one_long)
    padded, packed = step(9)(), step(9, [9] + [1] * (rows - 1))()
    greedy_equal = mx.array_equal(
        mx.argmax(packed[0, :9], axis=-1), mx.argmax(padded[0, :9], axis=-1)
    ).item()
    plain_native, plain_mlx = step(1)(), with_mlx_softmax(step(1))()
    seconds = timed(runs, repeats)
    plain = seconds["plain"]
    return {
        "rows": rows,
        "cached_tokens": cached,
        "ms": {k: round(v * 1e3, 1) for k, v in seconds.items()},
        "in_plain_steps": {k: round(v / plain, 2) for k, v in seconds.items()},
        "softmax_identical_logits": mx.array_equal(plain_native, plain_mlx).item(),
        "packed_greedy_equal": greedy_equal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cached", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, nargs="*", default=[500, 2000])
    args = parser.parse_args()
    _, path = ModelStore(default_home()).resolve(args.model)
    model, tokenizer = load_checkpoint(path)
    if not cpu_decode.install(model):
        raise SystemExit(f"cpu_decode does not cover {type(model).__module__}")
    ids = tokenizer.encode(TEXT)
    report = {
        "machine": {
            "device": str(mx.default_device()),
            "platform": platform.platform(),
            "blas": str(BLAS),
            "native_softmax": native_softmax.kernel_status()[1],
            "model": str(path),
        },
        "verification": verification_passes(model, ids, args.rows, args.cached, args.repeats),
        "prompts": [prompt_passes(model, ids, n, max(2, args.repeats // 2)) for n in args.prompts],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
