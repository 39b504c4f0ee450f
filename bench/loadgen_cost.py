"""What the load generator itself costs: bench/harness.py's threaded `stream_chat` (one thread
per stream, one shared httpx client, one process) against bench/loadgen.py (asyncio worker
processes), taking turns on one server, bench/edge_overhead.py's scripted one (the real app
around a model step that only sleeps `--step-ms`), so the server's work is small and the same.

Per round and client: a 1-token burst (client CPU / clients = per request) and a `--tokens` burst
(the CPU difference / extra tokens = per token), the burst's wall and aggregate tok/s, steady
decode, and TTFT p50 / last. Client CPU: the threaded client's is this process's
`time.process_time()`; the load generator's is its workers' own.

    python bench/loadgen_cost.py [--clients 256] [--tokens 128] [--step-ms 30] [--rounds 3]
        [--client-procs N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.concurrency import prompt
from bench.edge_overhead import MODEL, wait_healthy
from bench.harness import (
    ROOT,
    Server,
    StreamResult,
    chat_body,
    free_port,
    percentile,
    steady_decode_rate,
    stream_chat,
)
from bench.loadgen import LoadGenerator, default_procs

Burst = Callable[[int], tuple[list[StreamResult], float, float]]  # results, wall, client CPU


def threaded(server: Server, clients: int) -> Burst:
    def run(tokens: int) -> tuple[list[StreamResult], float, float]:
        cpu, start = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(
                pool.map(lambda i: stream_chat(server, prompt(i), tokens), range(clients))
            )
        return results, time.perf_counter() - start, time.process_time() - cpu

    return run


def processes(load: LoadGenerator, url: str, clients: int) -> Burst:
    def run(tokens: int) -> tuple[list[StreamResult], float, float]:
        bodies = [chat_body(MODEL, prompt(i), tokens) for i in range(clients)]
        burst = load.burst(f"{url}/v1/chat/completions", bodies)
        return burst.results, burst.wall_s, burst.client_cpu_s

    return run


def measure(name: str, run: Burst, clients: int, tokens: int) -> dict[str, object]:
    _, _, cpu_one = run(1)
    results, wall, cpu = run(tokens)
    good = [r for r in results if r.ok]
    produced = sum(r.tokens for r in good)
    return {
        "client": name,
        "failed": clients - len(good),
        "client_ms_per_request": round(cpu_one / clients * 1e3, 2),
        "client_us_per_token": round((cpu - cpu_one) / (clients * (tokens - 1)) * 1e6, 1),
        "client_cpu_s": round(cpu, 2),  # over the whole `tokens` burst: the steadier figure
        "wall_s": round(wall, 2),
        "aggregate_tok_s": round(produced / wall),
        "steady_decode_tok_s": round(steady_decode_rate(good)) if good else None,
        "ttft_p50_s": round(percentile([r.ttft_s for r in good], 0.5), 3),
        "ttft_last_s": round(percentile([r.ttft_s for r in good], 1.0), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--step-ms", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-procs", type=int, default=default_procs())
    args = parser.parse_args()
    port = free_port()
    command = [sys.executable, "bench/edge_overhead.py", "serve", "--port", str(port)]
    process = subprocess.Popen([*command, "--step-ms", str(args.step_ms)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    server = Server("mlxd", url, MODEL, process)
    try:
        wait_healthy(process, port)
        with LoadGenerator(args.client_procs) as load:
            clients = {
                "threads": threaded(server, args.clients),
                "loadgen": processes(load, url, args.clients),
            }
            for run in clients.values():
                run(4)  # warm-up: first-use costs on both sides
            for round_number in range(args.rounds):
                for name, run in clients.items():  # interleaved: drift hits both alike
                    row = measure(name, run, args.clients, args.tokens)
                    print(json.dumps({"round": round_number, **row}), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
