"""One model over 1 vs N ranks through mlxd's HTTP API (issues 26 and 27), optionally against a
sharded `mlx_lm.server`, and what a client sees when rank 1 is killed mid-stream.

For each rank count in `--ranks` (1 is the plain one-process server; N > 1 is
`mlxd serve --distributed B --hosts 127.0.0.1 x N`, rank 0 spawning its followers):
- single-stream decode tok/s (greedy, `--tokens` tokens, median of `--repeats` runs, with spread);
- aggregate tok/s at each of `--streams` concurrent streams;
- TTFT of a `--prompt-tokens`-token prompt;
and, with `--peer`, the same through `mlx.launch -n N --backend B -- mlx_lm.server` (its sharded
server); with `--kill`, the time from `kill -9` of rank 1 to the client's error event, and /health.

`--dry-run` runs the distributed code path with a group of one (`--hosts 127.0.0.1`): the same
plans, collectives (all_sum over a singleton group) and watchdog, on any machine.

    python bench/distributed.py --model DIR --backend nccl --ranks 1,2 --streams 8,32 --peer \
        --kill --out docs/results/distributed-nccl.json
    python bench/distributed.py --model DIR --backend ring --dry-run --tokens 64 --streams 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    ROOT,
    Server,
    StreamResult,
    _wait_healthy,
    free_port,
    stream_chat,
)

WORDS = "the quick brown fox jumps over the lazy dog while the river runs past the old mill "


def start_mlxd(model: str, backend: str | None, ranks: int, pipeline: bool) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "server", "serve", "--model", model, "--port", str(port)]
    if backend is not None:
        command += ["--distributed", backend, "--hosts", ",".join(["127.0.0.1"] * ranks)]
        command += ["--pipeline"] if pipeline else []
    env = {
        **os.environ,
        "MLXD_LOG_LEVEL": "warning",
        "MLXD_SPEECH_MODEL": "",
        "MLXD_EMBEDDING_MODEL": "",
        # Every run starts cold: no prefix cache entries spilled by an earlier run.
        "MLXD_PREFIX_DISK_MB": "0",
    }
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(process, url, "/health")
    return Server(f"mlxd x{ranks}", url, Path(model).name, process)


def start_sharded_mlx_lm(model: str, backend: str, ranks: int, pipeline: bool) -> Server:
    """mlx_lm.server over N local ranks, started by mlx.launch (rank 0 answers HTTP)."""
    port = free_port()
    command = [sys.executable, "-m", "mlx._distributed_utils.launch", "-n", str(ranks)]
    command += ["--backend", backend, "--python", sys.executable, "--"]
    command += ["-m", "mlx_lm.server", "--model", model, "--port", str(port)]
    command += ["--log-level", "WARNING"] + (["--pipeline"] if pipeline else [])
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(process, url, "/v1/models")
    return Server(f"mlx_lm.server x{ranks}", url, model, process)


def prompt_of(words: int, salt: int) -> list[dict[str, str]]:
    text = f"[{salt}] " + (WORDS * (words // len(WORDS.split()) + 1))
    return [{"role": "user", "content": " ".join(text.split()[:words])}]


def decode_rate(result: StreamResult) -> float:
    return (result.tokens - 1) / (result.total_s - result.ttft_s) if result.tokens > 1 else 0.0


def measure(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    stream_chat(server, prompt_of(16, -1), 8)  # warm-up
    single = [stream_chat(server, prompt_of(16, i), args.tokens) for i in range(args.repeats)]
    rates = [decode_rate(r) for r in single if r.ok]
    out: dict[str, Any] = {
        "single_stream_tok_s": statistics.median(rates) if rates else None,
        "single_stream_spread": [min(rates), max(rates)] if rates else None,
        "errors": [r.error for r in single if not r.ok],
    }
    for streams in args.streams:
        with ThreadPoolExecutor(streams) as pool:
            start = time.perf_counter()
            results = list(
                pool.map(
                    lambda i: stream_chat(server, prompt_of(16, 100 + i), args.tokens),
                    range(streams),
                )
            )
            elapsed = time.perf_counter() - start
        tokens = sum(r.tokens for r in results if r.ok)
        out[f"aggregate_{streams}_tok_s"] = tokens / elapsed
        out["errors"] += [r.error for r in results if not r.ok]
    ttft = stream_chat(server, prompt_of(int(args.prompt_tokens * 0.75), 999), 8)
    out["ttft_long_prompt_s"] = ttft.ttft_s if ttft.ok else None
    return out


def kill_rank_one(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """kill -9 of rank 1 during a stream: the client's error, how fast, what /health says."""
    pid = server.process.pid
    tasks = Path(f"/proc/{pid}/task").glob("*/children")
    followers = [int(c) for task in tasks for c in task.read_text().split()]
    if not followers:
        return {"skipped": "no follower process of this server found"}
    body = {
        "model": server.model,
        "messages": prompt_of(16, 7),
        "max_tokens": 4 * args.tokens,
        "stream": True,
    }
    seen: dict[str, Any] = {}
    with server.client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data:"))
        next(lines)
        os.kill(followers[0], signal.SIGKILL)
        killed = time.perf_counter()
        for line in lines:
            if '"error"' in line:
                seen["error_after_s"] = time.perf_counter() - killed
                seen["error"] = json.loads(line[5:])["error"]
                break
    health = httpx.get(f"{server.url}/health", timeout=10)
    seen["health_status"] = health.status_code
    seen["health"] = health.json().get("status")
    refused = server.client.post(
        f"{server.url}/v1/chat/completions", json={**body, "stream": False}
    )
    seen["new_request_status"] = refused.status_code
    seen["retry_after"] = refused.headers.get("retry-after")
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an MLX model directory")
    parser.add_argument("--backend", default="ring", choices=["ring", "nccl"])
    parser.add_argument("--ranks", default="1,2", help="rank counts to compare (1 = plain)")
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--streams", default="8,32", help="concurrency levels")
    parser.add_argument("--prompt-tokens", type=int, default=3000)
    parser.add_argument("--peer", action="store_true", help="also run sharded mlx_lm.server")
    parser.add_argument("--kill", action="store_true", help="kill -9 rank 1 mid-stream")
    parser.add_argument("--dry-run", action="store_true", help="the distributed path, 1 rank")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.streams = [int(s) for s in args.streams.split(",") if s]
    ranks = [1] if args.dry_run else [int(r) for r in args.ranks.split(",")]
    report: dict[str, Any] = {
        "model": args.model,
        "backend": args.backend,
        "pipeline": args.pipeline,
        "machine": platform.platform(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "runs": {},
    }
    for count in ranks:
        distributed = args.dry_run or count > 1
        backend = args.backend if distributed else None
        name = f"mlxd x{count}" + (" (distributed path)" if distributed else "")
        server = start_mlxd(args.model, backend, count, args.pipeline)
        try:
            report["runs"][name] = measure(server, args)
            if args.kill and count > 1:
                report["runs"][name]["kill_rank_1"] = kill_rank_one(server, args)
        finally:
            server.stop()
        if args.peer and count > 1:
            peer = start_sharded_mlx_lm(args.model, args.backend, count, args.pipeline)
            try:
                report["runs"][peer.name] = measure(peer, args)
            finally:
                os.killpg(peer.process.pid, signal.SIGTERM)
                peer.stop()
        print(json.dumps(report["runs"], indent=1), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
