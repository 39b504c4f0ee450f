"""Prefix cache spills: how long the engine thread is held per entry written to disk, with the
file work on the calling thread (as before) vs on the DiskWorker's thread (as the engine runs
it now). Every stream on the engine waits that long each time an entry is evicted to disk.

A real model's cache is filled with a prompt of `--tokens` tokens (mlx-lm's prompt cache, as the
engine's are), then `DiskPrefixCache.save` is timed on this thread: inline (checksum, write,
rename here) and with a DiskWorker (bytes copied here; the rest on the writer's thread, whose
own time is reported apart as `flush_s`). Runs alternate; medians and min–max.

    python bench/spill.py [--model NAME_OR_DIR] [--tokens 600 3000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

blas.preload_from_env()

import mlx.core as mx  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from engines.llm.caches import nbytes  # noqa: E402
from engines.llm.disk_cache import DiskPrefixCache  # noqa: E402
from engines.llm.disk_worker import DiskWorker  # noqa: E402
from engines.weights.checkpoint import load_checkpoint  # noqa: E402
from engines.weights.store import ModelStore, default_home  # noqa: E402


def filled(model: Any, tokens: list[int]) -> list[Any]:
    cache = make_prompt_cache(model)
    for start in range(0, len(tokens), 512):
        model(mx.array([tokens[start : start + 512]]), cache=cache)
        mx.eval([layer.state for layer in cache])
    return cache


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(model: Any, vocab: int, length: int, runs: int) -> dict[str, Any]:
    inline_s: list[float] = []
    writer_s: list[float] = []
    flush_s: list[float] = []
    size = 0
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(runs):
            tokens = [(run * 7919 + 31 * j) % (vocab - 10) + 5 for j in range(length)]
            cache = filled(model, tokens)
            size = nbytes(cache)
            inline = DiskPrefixCache(Path(scratch) / "inline", "bench", 2**40)
            started = time.perf_counter()
            inline.save(tuple(tokens), cache)
            inline_s.append(time.perf_counter() - started)
            writer = DiskWorker()
            threaded = DiskPrefixCache(Path(scratch) / "writer", "bench", 2**40, writer)
            started = time.perf_counter()
            threaded.save(tuple(tokens), cache)
            writer_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            writer.close()
            flush_s.append(time.perf_counter() - started)
    return {
        "tokens": length,
        "entry_bytes": size,
        "inline_save_s": spread(inline_s),
        "writer_save_s": spread(writer_s),
        "writer_flush_s": spread(flush_s),
        "engine_thread_ratio": statistics.median(writer_s) / statistics.median(inline_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, nargs="+", default=[600, 3000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/spill.json"))
    args = parser.parse_args()
    path = Path(args.model)
    if not path.is_dir():
        path = ModelStore(default_home()).path_for(args.model)
    model, tokenizer = load_checkpoint(path)
    vocab = len(tokenizer.get_vocab())
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.system()}",
        "device": str(mx.default_device()),
        "model": str(path),
        "rows": [],
    }
    for length in args.tokens:
        row = measure(model, vocab, length, args.runs)
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
