"""Prefill stall: how long a running stream waits while a long prompt arrives and is prefilled.
One greedy stream runs; after a few tokens a ~2,000-token prompt is sent; we report the running
stream's inter-token gaps (p50, p95, max) for mlxd and mlx_lm.server.

    python bench/stall.py [--model NAME_OR_DIR] [--prompt-tokens 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

blas.preload_from_env()

from bench.harness import (  # noqa: E402
    Server,
    StreamResult,
    percentile,
    start_mlx_lm_server,
    start_mlxd,
    stream_chat,
)
from engines.weights.store import ModelStore, default_home  # noqa: E402

LONG_UNIT = "The committee reviewed the harbour accounts line by line and found them in order. "


def measure(server: Server, prompt_tokens: int) -> dict[str, Any]:
    result: list[StreamResult] = []
    story = [{"role": "user", "content": "Write a very long story about a lighthouse."}]
    runner = threading.Thread(target=lambda: result.append(stream_chat(server, story, 120)))
    runner.start()
    time.sleep(3.0)  # the stream is decoding
    long_prompt = LONG_UNIT * (prompt_tokens // 16)
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": long_prompt + "Summarise."}],
        "max_tokens": 1,
    }
    sent = time.perf_counter()
    server.client.post(f"{server.url}/v1/chat/completions", json=body)
    long_done = time.perf_counter() - sent
    runner.join()
    gaps = result[0].gaps_s
    return {
        "long_prompt_s": long_done,
        "gap_p50_s": percentile(gaps, 0.5),
        "gap_p95_s": percentile(gaps, 0.95),
        "gap_max_s": max(gaps),
        "stream_ok": result[0].ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--servers", default="mlxd,mlx_lm.server")
    parser.add_argument("--out", type=Path, default=Path("bench/results/stall.json"))
    args = parser.parse_args()
    name, path = ModelStore(default_home()).resolve(args.model)
    report: dict[str, Any] = {"model": args.model, "prompt_tokens": args.prompt_tokens}
    for server_name in args.servers.split(","):
        server = (
            start_mlxd(str(path), name) if server_name == "mlxd" else start_mlx_lm_server(str(path))
        )
        try:
            stream_chat(server, [{"role": "user", "content": "hi"}], 4)
            report[server_name] = measure(server, args.prompt_tokens)
            print(server_name, json.dumps(report[server_name]), flush=True)
        finally:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
