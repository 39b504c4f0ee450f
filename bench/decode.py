"""Single-stream decode: mlxd over HTTP vs raw mlx-lm `stream_generate`, same model and BLAS.

The server runs as its own process (`mlxd serve`), as users run it; this process is the HTTP
client and, in between, runs raw mlx-lm on the same model, prompts and output length. Runs are
interleaved (raw, server, server, raw, ...) so drift hits both; we report medians and spread.
Decode rate = (tokens - 1) / (time of last token - time of first token), for both sides.

    python bench/decode.py [--model NAME_OR_DIR] [--runs 7] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

BLAS = blas.preload_from_env()

import httpx  # noqa: E402
import mlx.core as mx  # noqa: E402
from mlx_lm import stream_generate  # noqa: E402

from engines.llm.templates import render_chat  # noqa: E402
from engines.weights.checkpoint import load_checkpoint  # noqa: E402
from engines.weights.store import ModelStore, default_home  # noqa: E402

PROMPTS = [
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how a steam engine works, step by step.",
    "List as many fruits as you can, one per line, with a short description of each.",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: str, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "server", "serve", "--model", model, "--port", str(port)]
    command += ["--log-level", "warning"]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError("server exited during start-up")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not become healthy")


def server_run(url: str, model: str, prompt: str, tokens: int) -> tuple[float, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first = last = 0.0
    count = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        if response.status_code != 200:
            raise RuntimeError(f"server answered {response.status_code}: {response.read()!r}")
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            payload = json.loads(line.removeprefix("data: "))
            if payload["choices"] and payload["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
            if payload.get("usage"):
                count = payload["usage"]["completion_tokens"]
    return (count - 1) / (last - first), count


def raw_run(model: Any, tokenizer: Any, prompt: str, tokens: int) -> tuple[float, int]:
    text = render_chat(tokenizer, [{"role": "user", "content": prompt}])
    ids = tokenizer.encode(text, add_special_tokens=False)
    first = last = 0.0
    count = 0
    for response in stream_generate(model, tokenizer, ids, max_tokens=tokens):
        last = time.perf_counter()
        first = first or last
        count = response.generation_tokens
    return (count - 1) / (last - first), count


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode.json"))
    args = parser.parse_args()

    served_name, path = ModelStore(default_home()).resolve(args.model)
    model, tokenizer = load_checkpoint(path)  # as mlxd loads it: float32 where marked
    port = free_port()
    server = start_server(args.model, port)
    url = f"http://127.0.0.1:{port}"
    raw: list[float] = []
    served: list[float] = []
    counts: set[tuple[int, int]] = set()
    try:
        for prompt in PROMPTS[:1]:  # warm-up both sides at full length (kernels compile per shape)
            raw_run(model, tokenizer, prompt, args.tokens)
            server_run(url, served_name, prompt, args.tokens)
        for run in range(args.runs):
            prompt = PROMPTS[run % len(PROMPTS)]
            order = ("raw", "server") if run % 2 == 0 else ("server", "raw")
            result: dict[str, tuple[float, int]] = {}
            for side in order:
                if side == "raw":
                    result[side] = raw_run(model, tokenizer, prompt, args.tokens)
                else:
                    result[side] = server_run(url, served_name, prompt, args.tokens)
            raw.append(result["raw"][0])
            served.append(result["server"][0])
            counts.add((result["raw"][1], result["server"][1]))
            print(f"run {run}: raw {raw[-1]:.1f} tok/s, server {served[-1]:.1f} tok/s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    report = {
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores",
        "device": str(mx.default_device()),
        "blas": BLAS.library or "bundled",
        "model": args.model,
        "tokens": args.tokens,
        "runs": args.runs,
        "token_counts_raw_server": sorted(counts),
        "raw_tok_s": summary(raw),
        "server_tok_s": summary(served),
        "ratio_of_medians": statistics.median(served) / statistics.median(raw),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
