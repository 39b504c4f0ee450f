"""Prefix reuse: time to first token of a follow-up turn over a long shared history, cold
(first time the server sees the history) vs warm (the turn after), for mlxd and mlx_lm.server.

    python bench/prefix.py [--model NAME_OR_DIR] [--history-tokens 1200] [--runs 3]

With `--restart`: mlxd only, the prefix cache on disk. Each run sends a history (cold), stops the
server (its prefix cache spills to MLXD_HOME, a fresh temporary directory), starts a new one on
the same home and sends the same prompt again: TTFT after the restart vs cold.

    python bench/prefix.py --restart --history-tokens 3000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

BLAS = blas.preload_from_env()

import mlx.core as mx  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from bench.harness import (  # noqa: E402
    Server,
    median,
    start_mlx_lm_server,
    start_mlxd,
    stream_chat,
)
from engines.weights.store import ModelStore, default_home  # noqa: E402

SENTENCES = [
    "The river bends twice before it reaches the old mill at the edge of town.",
    "Every morning the baker lights the oven before the first train passes.",
    "Maps of the valley show three bridges, but only two of them still stand.",
    "The library keeps a ledger of every book borrowed since the great flood.",
    "On market days the square fills with carts of apples, cheese and wool.",
]


def history(run: int, tokens: int, tokenizer: Any) -> list[dict[str, str]]:
    """A conversation of about `tokens` tokens, different for every run."""
    messages: list[dict[str, str]] = [
        {"role": "system", "content": f"You are a helpful archivist (session {run})."}
    ]
    turn = 0
    while len(tokenizer.encode(tokenizer.apply_chat_template(messages, tokenize=False))) < tokens:
        text = " ".join(SENTENCES[(turn + i + run) % len(SENTENCES)] for i in range(6))
        messages.append({"role": "user", "content": f"Note {turn} of run {run}: {text}"})
        messages.append({"role": "assistant", "content": f"Recorded note {turn}."})
        turn += 1
    return messages


def follow_up(server: Server, messages: list[dict[str, str]]) -> dict[str, Any]:
    first = [*messages, {"role": "user", "content": "Summarise the notes in one sentence."}]
    cold = stream_chat(server, first, 16)
    answer = _answer(server, first)
    second = [
        *first,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Which note mentions the library?"},
    ]
    warm = stream_chat(server, second, 16)
    return {"cold_ttft_s": cold.ttft_s, "warm_ttft_s": warm.ttft_s, "ok": cold.ok and warm.ok}


def after_restart(path: str, name: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    """TTFT of `messages` on a fresh server (cold), then on a restarted one (same MLXD_HOME)."""
    messages = [*messages, {"role": "user", "content": "Summarise the notes in one sentence."}]
    with tempfile.TemporaryDirectory() as home:
        env = {"MLXD_HOME": home, "MLXD_PREFIX_DISK_MB": "8192"}
        times = []
        for _ in range(2):
            server = start_mlxd(path, name, env)
            try:
                stream_chat(server, [{"role": "user", "content": "hi"}], 4)  # warm-up
                result = stream_chat(server, messages, 16)
                times.append(result.ttft_s if result.ok else float("nan"))
            finally:
                server.stop()  # drains; unloading spills the prefix cache to disk
        spilled = sum(f.stat().st_size for f in Path(home).rglob("*.safetensors"))
    return {"cold_ttft_s": times[0], "restart_ttft_s": times[1], "disk_bytes": spilled}


def _answer(server: Server, messages: list[dict[str, str]]) -> str:
    body = {"model": server.model, "messages": messages, "max_tokens": 16, "temperature": 0}
    response = server.client.post(f"{server.url}/v1/chat/completions", json=body).json()
    return str(response["choices"][0]["message"]["content"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--history-tokens", type=int, default=1200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--servers", default="mlxd,mlx_lm.server")
    parser.add_argument("--out", type=Path, default=Path("bench/results/prefix.json"))
    parser.add_argument("--restart", action="store_true", help="disk cache across a restart")
    args = parser.parse_args()
    name, path = ModelStore(default_home()).resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if args.restart:
        runs = [
            after_restart(str(path), name, history(run, args.history_tokens, tokenizer))
            for run in range(args.runs)
        ]
        ratios = [r["restart_ttft_s"] / r["cold_ttft_s"] for r in runs]
        restarted = {"runs": runs, "ratio_median": median(ratios), "ratios": ratios}
        print(json.dumps(restarted))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(restarted, indent=2))
        return
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores",
        "device": str(mx.default_device()),
        "blas": BLAS.library or "bundled",
        "model": args.model,
        "history_tokens": args.history_tokens,
        "servers": {},
    }
    for server_name in args.servers.split(","):
        server = (
            start_mlxd(str(path), name) if server_name == "mlxd" else start_mlx_lm_server(str(path))
        )
        try:
            stream_chat(server, [{"role": "user", "content": "hi"}], 4)  # warm-up
            runs = [
                follow_up(server, history(run, args.history_tokens, tokenizer))
                for run in range(args.runs)
            ]
        finally:
            server.stop()
        summary = {
            "cold_ttft_s_median": median([r["cold_ttft_s"] for r in runs]),
            "warm_ttft_s_median": median([r["warm_ttft_s"] for r in runs]),
            "runs": runs,
        }
        print(server_name, json.dumps(summary), flush=True)
        report["servers"][server_name] = summary
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
