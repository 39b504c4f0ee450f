"""Concurrency sweep: N streamed chat requests at once against mlxd and mlx_lm.server, same
model, BLAS, prompts and output lengths; plus raw mlx-lm BatchGenerator decode at the same batch
sizes as the ceiling. Reports aggregate tok/s, TTFT p50/p95, inter-token p95, failed requests.

    python bench/concurrency.py [--model NAME_OR_DIR] [--levels 1,4,8,16,32] [--tokens 64]
        [--repeat N] [--mlxd-env MLXD_MAX_BATCH=256 ...] [--client-procs N]

Each level runs once untimed (8 tokens: kernel plans for its shapes), then `--repeat` measured
bursts; mlxd's rows also carry its engine gauges from /metrics after the burst.

The load generator is bench/loadgen.py: a burst's requests are split over `--client-procs`
worker processes (default min(8, cores)), each streaming its share from one asyncio loop over
raw sockets, all starting at one shared instant. TTFT counts from that instant; the aggregate is
all tokens over the wall from it to the end of the last stream; chunk times are perf_counter
values (CLOCK_MONOTONIC on Linux, mach_absolute_time on macOS: one clock across processes), so
`steady_decode_tok_s` compares streams of different workers. `client_cpu_s` (the workers' CPU
over the burst) and `start_lag_s` (how late the latest worker launched) show whether the client
kept up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

BLAS = blas.preload_from_env()

import mlx.core as mx  # noqa: E402

from bench.harness import (  # noqa: E402
    Server,
    chat_body,
    percentile,
    start_mlx_lm_server,
    start_mlxd,
    steady_decode_rate,
    stream_chat,
)
from bench.loadgen import LoadGenerator, default_procs  # noqa: E402
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


def sweep_level(server: Server, load: LoadGenerator, clients: int, tokens: int) -> dict[str, Any]:
    bodies = [chat_body(server.model, prompt(i), tokens) for i in range(clients)]
    burst = load.burst(f"{server.url}/v1/chat/completions", bodies)
    results, wall = burst.results, burst.wall_s
    good = [r for r in results if r.ok]
    return {
        "clients": clients,
        "failed": len(results) - len(good),
        "errors": sorted({r.error for r in results if not r.ok})[:3],
        "aggregate_tok_s": sum(r.tokens for r in good) / wall,
        "ttft_p50_s": percentile([r.ttft_s for r in good], 0.5),
        "ttft_p95_s": percentile([r.ttft_s for r in good], 0.95),
        "ttft_mean_s": statistics.fmean(r.ttft_s for r in good) if good else float("nan"),
        # When first tokens arrived over the burst (one stall for all, or a queue draining).
        "ttft_quantiles_s": {
            f"p{q}": round(percentile([r.ttft_s for r in good], q / 100), 3)
            for q in (0, 10, 25, 75, 90, 100)
        },
        "inter_token_p95_s": percentile([g for r in good for g in r.gaps_s], 0.95),
        "steady_decode_tok_s": steady_decode_rate(good) if good else float("nan"),
        "tokens": sum(r.tokens for r in good),
        "wall_s": wall,
        "client_procs": min(len(load.workers), clients),
        "client_cpu_s": burst.client_cpu_s,
        "start_lag_s": burst.start_lag_s,
    }


def engine_gauges(server: Server) -> dict[str, float]:
    """mlxd's engine gauges from /metrics (largest batch so far, prefix cache hits, ...), of the
    served chat model only (mlxd also lists its speech and embedding engines, if any)."""
    text = server.client.get(f"{server.url}/metrics").text
    gauges = {}
    for line in text.splitlines():
        if line.startswith("mlxd_engine_") and f'model="{server.model}"' in line:
            name, value = line.split("{", 1)[0], line.rsplit(" ", 1)[-1]
            gauges[name.removeprefix("mlxd_engine_")] = float(value)
    return gauges


def ttft_totals(server: Server) -> tuple[float, float]:
    """mlxd's own time-to-first-token histogram so far: (sum of seconds, count of requests)."""
    text = server.client.get(f"{server.url}/metrics").text
    totals = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        for suffix in totals:
            if line.startswith(f'mlxd_time_to_first_token_seconds{suffix}{{model="{server.model}"'):
                totals[suffix] += float(line.rsplit(" ", 1)[-1])
    return totals["_sum"], totals["_count"]


def raw_batch_generator(model: Any, tokenizer: Any, clients: int, tokens: int) -> dict[str, Any]:
    """mlx-lm's BatchGenerator with `clients` prompts: decode tok/s once all are running, and
    the aggregate from insertion to the last token (prefill included, as in a server's burst;
    no HTTP)."""
    from mlx_lm.generate import BatchGenerator

    from engines.llm.templates import render_chat

    prompts = [
        tokenizer.encode(render_chat(tokenizer, prompt(i)), add_special_tokens=False)
        for i in range(clients)
    ]
    # Every prompt decoded in one batch (mlx-lm's default completion_batch_size is 32: above it
    # the rows never all ran together and the rate read 0).
    generator = BatchGenerator(
        model, max_tokens=tokens, stop_tokens=[[-1]], completion_batch_size=max(32, clients)
    )
    start = time.perf_counter()
    generator.insert(prompts, max_tokens=[tokens] * clients)
    produced = total = 0
    first = 0.0
    while True:
        responses = generator.next_generated()
        if not responses:
            break
        total += len(responses)
        if not first and len(responses) == clients:
            first = time.perf_counter()
            continue
        if first:
            produced += len(responses)
    end = time.perf_counter()
    generator.close()
    return {
        "clients": clients,
        "decode_tok_s": produced / (end - first),
        "aggregate_tok_s": total / (end - start),
    }


def sweep_server(
    server_name: str,
    path: str,
    name: str,
    mlxd_env: dict[str, str],
    load: LoadGenerator,
    levels: list[int],
    args: argparse.Namespace,
) -> tuple[str, list[dict[str, Any]]]:
    """Every level against one server started for it: an untimed burst, then the measured ones."""
    if server_name == "mlxd":
        server = start_mlxd(path, name, mlxd_env)
    else:
        server = start_mlx_lm_server(path)
    try:
        stream_chat(server, prompt(0), 8)  # warm-up
        rows = []
        for clients in levels:
            # Same shapes once untimed first: MLX compiles kernels on first use (per batch
            # size and padded prompt length), which is start-up cost, not serving speed.
            sweep_level(server, load, clients, 8)
            for _ in range(args.repeat):
                before = ttft_totals(server) if server.name == "mlxd" else (0.0, 0.0)
                row = sweep_level(server, load, clients, args.tokens)
                if server.name == "mlxd":
                    # The server's own mean TTFT over this burst (request accepted -> first
                    # output handed over), to hold against the client's `ttft_mean_s`: a large
                    # gap is time before the server accepted requests (connects, HTTP parsing,
                    # or a client that started them late).
                    (seconds, count), (seconds0, count0) = ttft_totals(server), before
                    count -= count0
                    row["server_ttft_mean_s"] = (seconds - seconds0) / count if count else None
                    row["engine"] = engine_gauges(server)
                print(server.name, json.dumps(row), flush=True)
                rows.append(row)
        return server.name, rows
    finally:
        server.stop()


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
    parser.add_argument(
        "--client-procs",
        type=int,
        default=default_procs(),
        help="load generator processes a burst's requests are split over (default min(8, cores))",
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
        "client_procs": args.client_procs,
        "servers": {},
    }
    with LoadGenerator(args.client_procs) as load:
        for server_name in args.servers.split(","):
            served, rows = sweep_server(server_name, str(path), name, mlxd_env, load, levels, args)
            report["servers"][served] = rows
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
