"""Soak: rounds of 64 concurrent streamed clients against `mlxd serve`, half of them leaving
mid-stream. Reports failures (non-200, error events, streams ending without [DONE]), the
engine's active count after each round and the server's resident memory after each round
(flat across rounds = nothing accepted is leaked; the prefix cache is bounded).

    python bench/soak.py [--model NAME_OR_DIR] [--clients 64] [--rounds 3] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.harness import Server, start_mlxd
from engines.weights.store import ModelStore, default_home


def client(server: Server, number: int, tokens: int) -> str:
    """How the client's stream ended: done, left (on purpose), or what went wrong."""
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": f"Tell me a story about the number {number}."}],
        "max_tokens": tokens,
        "temperature": 0.8,
        "stream": True,
    }
    chunks = 0
    try:
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", json=body, timeout=600
        ) as response:
            if response.status_code != 200:
                return f"HTTP {response.status_code}"
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    return "done"
                if line.startswith('data: {"error"'):
                    return f"error event {line[:200]}"
                if line.startswith("data: {"):
                    chunks += 1
                    if number % 2 and chunks >= 3:
                        return "left"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}"
    return "ended without [DONE]"


def rss_mib(pid: int) -> float:
    output = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True)
    return int(output.stdout.strip() or 0) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    args = parser.parse_args()
    name, path = ModelStore(default_home()).resolve(args.model)
    server = start_mlxd(str(path), name)
    rounds: list[dict[str, Any]] = []
    try:
        baseline = rss_mib(server.process.pid)
        for number in range(args.rounds):
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                outcomes = list(
                    pool.map(lambda i: client(server, i, args.tokens), range(args.clients))
                )
            time.sleep(1.0)  # let cancelled rows leave at the next engine steps
            health = httpx.get(f"{server.url}/health").json()
            stats = health["engines"][name]
            staying = [o for i, o in enumerate(outcomes) if i % 2 == 0]
            leaving = [o for i, o in enumerate(outcomes) if i % 2 == 1]
            row = {
                "round": number,
                "wall_s": time.perf_counter() - start,
                "staying_done": staying.count("done"),
                "staying_failed": [o for o in staying if o != "done"],
                "leaving_left": leaving.count("left"),
                "active_after": health["active"],
                "queued_after": stats["queued"],
                "largest_batch": stats["largest_batch"],
                "rss_mib_after": rss_mib(server.process.pid),
                "prefix_cache_mib": stats["prefix_cache_bytes"] / 2**20,
            }
            print(json.dumps(row), flush=True)
            rounds.append(row)
    finally:
        server.stop()
    report = {"model": args.model, "clients": args.clients, "rss_mib_before": baseline}
    report["rounds"] = rounds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
