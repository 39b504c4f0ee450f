"""Concurrency sweep: N streamed chat requests at once against mlxd and mlx_lm.server, same
model, BLAS, prompts and output lengths; plus raw mlx-lm BatchGenerator decode at the same batch
sizes as the ceiling. Reports aggregate tok/s, TTFT p50/p95, inter-token p95, failed requests.

    python bench/concurrency.py [--model NAME_OR_DIR] [--levels 1,4,8,16,32] [--tokens 64]
        [--repeat N] [--mlxd-env MLXD_MAX_BATCH=256 ...]

Each level runs once untimed (8 tokens: kernel plans for its shapes), then `--repeat` measured
bursts; mlxd's rows also carry its engine gauges from /metrics after the burst.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

BLAS = blas.preload_from_env()

import mlx.core as mx  # noqa: E402

from bench.harness import (  # noqa: E402
    Server,
    percentile,
    start_mlx_lm_server,
    start_mlxd,
    steady_decode_rate,
    stream_chat,
)
from engines.weights.store import ModelStore, default_home  # noqa: E402

TOPICS = [
    "a lighthouse keeper",
    "the history of bread",
    "how volcanoes form",
    "a robot learning to paint",
    "the life of a honeybee",
    "building a wooden boat",
    "a journey across the desert",
    "the first day at a new school",
]


def prompt(i: int) -> list[dict[str, str]]:
    topic = TOPICS[i % len(TOPICS)]
    return [{"role": "user", "content": f"Write a long, detailed story about {topic}. ({i})"}]


def sweep_level(server: Server, clients: int, tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: stream_chat(server, prompt(i), tokens), range(clients)))
    wall = time.perf_counter() - start
    good = [r for r in results if r.ok]
    return {
        "clients": clients,
        "failed": len(results) - len(good),
        "errors": sorted({r.error for r in results if not r.ok})[:3],
        "aggregate_tok_s": sum(r.tokens for r in good) / wall,
        "ttft_p50_s": percentile([r.ttft_s for r in good], 0.5),
        "ttft_p95_s": percentile([r.ttft_s for r in good], 0.95),
        # When first tokens arrived over the burst (one stall for all, or a queue draining).
        "ttft_quantiles_s": {
            f"p{q}": round(percentile([r.ttft_s for r in good], q / 100), 3)
            for q in (0, 10, 25, 75, 90, 100)
        },
        "inter_token_p95_s": percentile([g for r in good for g in r.gaps_s], 0.95),
        "steady_decode_tok_s": steady_decode_rate(good) if good else float("nan"),
        "tokens": sum(r.tokens for r in good),
        "wall_s": wall,
    }


def engine_gauges(server: Server) -> dict[str, float]:
    """mlxd's engine gauges from /metrics (largest batch so far, prefix cache hits, ...)."""
    text = server.client.get(f"{server.url}/metrics").text
    gauges = {}
    for line in text.splitlines():
        if line.startswith("mlxd_engine_") and "{" in line:
            name, value = line.split("{", 1)[0], line.rsplit(" ", 1)[-1]
            gauges[name.removeprefix("mlxd_engine_")] = float(value)
    return gauges


def raw_batch_generator(model: Any, tokenizer: Any, clients: int, tokens: int) -> dict[str, Any]:
    """mlx-lm's BatchGenerator with `clients` prompts: decode tok/s once all are running."""
    from mlx_lm.generate import BatchGenerator

    from engines.llm.templates import render_chat

    prompts = [
        tokenizer.encode(render_chat(tokenizer, prompt(i)), add_special_tokens=False)
        for i in range(clients)
    ]
    generator = BatchGenerator(model, max_tokens=tokens, stop_tokens=[[-1]])
    generator.insert(prompts, max_tokens=[tokens] * clients)
    produced = 0
    first = 0.0
    while True:
        responses = generator.next_generated()
        if not responses:
            break
        if not first and len(responses) == clients:
            first = time.perf_counter()
            continue
        if first:
            produced += len(responses)
    generator.close()
    return {"clients": clients, "decode_tok_s": produced / (time.perf_counter() - first)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--levels", default="1,4,8,16,32")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--servers", default="mlxd,mlx_lm.server")
    parser.add_argument("--out", type=Path, default=Path("bench/results/concurrency.json"))
    parser.add_argument(
        "--mlxd-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in mlxd's environment (e.g. MLXD_MAX_BATCH=256); repeatable",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="measured bursts per level, on the same server"
    )
    args = parser.parse_args()
    mlxd_env = dict(item.split("=", 1) for item in args.mlxd_env)
    levels = [int(x) for x in args.levels.split(",")]
    name, path = ModelStore(default_home()).resolve(args.model)
    report: dict[str, Any] = {
        "mlxd_env": mlxd_env,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores",
        "device": str(mx.default_device()),
        "blas": BLAS.library or "bundled",
        "model": args.model,
        "tokens": args.tokens,
        "servers": {},
    }
    for server_name in args.servers.split(","):
        if server_name == "mlxd":
            server = start_mlxd(str(path), name, mlxd_env)
        else:
            server = start_mlx_lm_server(str(path))
        try:
            stream_chat(server, prompt(0), 8)  # warm-up
            rows = []
            for clients in levels:
                # Same shapes once untimed first: MLX compiles kernels on first use (per batch
                # size and padded prompt length), which is start-up cost, not serving speed.
                sweep_level(server, clients, 8)
                for _ in range(args.repeat):
                    row = sweep_level(server, clients, args.tokens)
                    if server.name == "mlxd":
                        row["engine"] = engine_gauges(server)
                    print(server.name, json.dumps(row), flush=True)
                    rows.append(row)
            report["servers"][server.name] = rows
        finally:
            server.stop()
    from engines.weights.checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(path)  # as mlxd loads it: float32 where marked
    report["raw_batch_generator"] = []
    for clients in levels:
        raw_batch_generator(model, tokenizer, clients, 8)  # warm-up, as for the servers
        row = raw_batch_generator(model, tokenizer, clients, args.tokens)
        print("raw BatchGenerator", json.dumps(row), flush=True)
        report["raw_batch_generator"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
