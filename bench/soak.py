"""Soak: rounds of 64 concurrent clients against `mlxd serve`: half of them streaming and leaving
at a random point, the rest streaming to the end or not streaming, and every 8th client sending a
malformed request instead. Reports
failures (a well-formed request not completed, a 5xx anywhere, a malformed one not answered with
an OpenAI-shaped 4xx), the engine's active count after each round and the server's resident
memory after each round (flat across rounds = nothing accepted is leaked).

    python bench/soak.py [--model NAME_OR_DIR] [--clients 64] [--rounds 3] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import random
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

BAD_REQUESTS: list[tuple[str, bytes]] = [
    ("bad JSON", b'{"model": "m", "messages": ['),
    ("not an object", b"[1, 2, 3]"),
    ("wrong type", b'{"model": "MODEL", "messages": "hello"}'),
    ("empty messages", b'{"model": "MODEL", "messages": []}'),
    ("unknown role", b'{"model": "MODEL", "messages": [{"role": "wizard", "content": "x"}]}'),
    ("invalid UTF-8", b'{"model": "MODEL", "messages": [{"role": "user", "content": "\xff"}]}'),
    ("lone surrogate", b'{"model": "MODEL", "messages": [{"role": "user", "content": "\\ud800"}]}'),
    ("unknown model", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}'),
    ("out of range", b'{"model": "MODEL", "messages": [{"role": "user", "content": "x"}], "n": 0}'),
]


def bad_client(server: Server, number: int) -> str:
    """A malformed request: expected an OpenAI-shaped 4xx ("refused")."""
    label, body = BAD_REQUESTS[number % len(BAD_REQUESTS)]
    body = body.replace(b"MODEL", server.model.encode())
    try:
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
            timeout=600,
        )
        error = response.json().get("error", {})
    except (httpx.HTTPError, ValueError) as exc:
        return f"{label}: {type(exc).__name__}"
    if 400 <= response.status_code < 500 and set(error) == {"message", "type", "param", "code"}:
        return "refused"
    return f"{label}: HTTP {response.status_code}"


def plain_client(server: Server, number: int, tokens: int) -> str:
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": f"Name a colour and the number {number}."}],
        "max_tokens": tokens,
    }
    try:
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if response.status_code == 200 and response.json()["choices"][0]["finish_reason"]:
        return "done"
    return f"HTTP {response.status_code}"


def kind(number: int) -> str:
    """Client kinds by number: odd ones stream and leave at a random chunk (half the clients);
    of the even ones every 4th sends a malformed request, and the others stream to the end or
    do not stream."""
    if number % 2 == 1:
        return "leaving"
    if number % 8 == 6:
        return "malformed"
    return "streaming" if number % 4 == 0 else "plain"


def client(server: Server, number: int, tokens: int) -> str:
    """What happened: done, left (on purpose), refused (malformed, on purpose), or the problem."""
    if kind(number) == "malformed":
        return bad_client(server, number)
    if kind(number) == "plain":
        return plain_client(server, number, tokens)
    leave_after = random.Random(number).randint(1, tokens) if kind(number) == "leaving" else None
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
                    if leave_after is not None and chunks >= leave_after:
                        return "left"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}"
    return "ended without [DONE]"


def metric_lines(server: Server) -> list[str]:
    return httpx.get(f"{server.url}/metrics").text.splitlines()


def five_xx(server: Server) -> int:
    """Responses with a 5xx status so far, from the server's own /metrics."""
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metric_lines(server)
        if line.startswith("mlxd_http_requests_total") and 'status="5' in line
    )


def mlx_memory_mib(server: Server) -> dict[str, float]:
    """MLX's allocator (arrays in use, its cache, peak), from the server's /metrics."""
    values = {}
    for line in metric_lines(server):
        if line.startswith("mlxd_mlx_") and not line.startswith("#"):
            name, value = line.split(" ")
            values[name.removeprefix("mlxd_mlx_").removesuffix("_memory_bytes")] = (
                float(value) / 2**20
            )
    return values


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
            errors_before = five_xx(server)
            with ThreadPoolExecutor(args.clients) as pool:
                outcomes = list(
                    pool.map(lambda i: client(server, i, args.tokens), range(args.clients))
                )
            time.sleep(1.0)  # let cancelled rows leave at the next engine steps
            health = httpx.get(f"{server.url}/health").json()
            stats = health["engines"][name]
            bad = [o for i, o in enumerate(outcomes) if kind(i) == "malformed"]
            leaving = [o for i, o in enumerate(outcomes) if kind(i) == "leaving"]
            staying = [o for i, o in enumerate(outcomes) if kind(i) in ("streaming", "plain")]
            row = {
                "round": number,
                "wall_s": time.perf_counter() - start,
                "staying_done": f"{staying.count('done')}/{len(staying)}",
                "staying_failed": [o for o in staying if o != "done"],
                "leaving_left": f"{leaving.count('left')}/{len(leaving)}",
                "leaving_failed": [o for o in leaving if o not in ("left", "done")],
                "malformed_refused": f"{bad.count('refused')}/{len(bad)}",
                "malformed_failed": [o for o in bad if o != "refused"],
                "server_errors_5xx": five_xx(server) - errors_before,
                "active_after": health["active"],
                "queued_after": stats["queued"],
                "largest_batch": stats["largest_batch"],
                "rss_mib_after": rss_mib(server.process.pid),
                "mlx_mib_after": mlx_memory_mib(server),
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
