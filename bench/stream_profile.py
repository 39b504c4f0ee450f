"""Where one stream's host time goes in the server, thread by thread (issue 25: in one process,
lean blocks decode 1.38x faster than mlx-lm's layers, but over HTTP mlxd is ~1.24x raw mlx-lm).

Starts mlxd on `--model`, sends `--warm` streamed requests (kernels planned, the background
warm-up over), then samples the server with py-spy (`--spy`: its binary; `--nonblocking`, idle
threads dropped by py-spy) at `--rate` Hz while `--streams` rounds of `--concurrent` greedy
requests (1: one stream at a time) of `--tokens` tokens run. Reports the requests' decode rates,
each thread's share of the samples and its top frames by self samples (the Python frame that
was running, or that called into MLX's C++ when the sample caught it there), so the engine
thread's step can be told from its bookkeeping and from the event loop's per-token work.

    python bench/stream_profile.py --model DIR --spy PATH [--streams 4] [--tokens 1024]
        [--concurrent 1] [--rate 500] [--warm 2] [--top 25] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import start_mlxd, stream_chat
from engines.weights.store import ModelStore, default_home

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def thread_profiles(raw: str, top: int) -> dict[str, object]:
    """py-spy's raw (collapsed) stacks grouped by their first frame, the thread: its samples
    and its `top` frames by self samples (line numbers dropped)."""
    samples: collections.Counter[str] = collections.Counter()
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        n = int(count)
        samples[thread] += n
        if frames:
            own[thread][frames[-1].rsplit(":", 1)[0] + ")"] += n
    total = sum(samples.values())
    return {
        "samples": total,
        "threads": [
            {
                "thread": thread,
                "share": round(n / total, 4),
                "self": [
                    {"frame": frame, "share_of_thread": round(k / n, 4)}
                    for frame, k in own[thread].most_common(top)
                ],
            }
            for thread, n in samples.most_common()
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--spy", required=True, help="the py-spy binary")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--concurrent", type=int, default=1, help="streams at once per round")
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--warm", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("bench/results/stream_profile.json"))
    args = parser.parse_args()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw_path = args.out.with_suffix(".spy")
    name, path = ModelStore(default_home()).resolve(args.model)
    server = start_mlxd(path, name)
    try:
        for _ in range(args.warm):
            stream_chat(server, MESSAGES, args.tokens)
        pid, rate = str(server.process.pid), str(args.rate)
        record = ["record", "--pid", pid, "-r", rate, "-f", "raw", "-o", str(raw_path)]
        spy = subprocess.Popen([args.spy, *record, "--threads", "--nonblocking"])
        time.sleep(2)  # py-spy attaches
        results = []
        with ThreadPoolExecutor(args.concurrent) as clients:  # HTTP clients only: no MLX here
            for _ in range(args.streams):
                round_ = [
                    clients.submit(stream_chat, server, MESSAGES, args.tokens)
                    for _ in range(args.concurrent)
                ]
                results += [future.result() for future in round_]
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    finally:
        server.stop()
    rates = [
        (r.tokens - 1) / (r.chunk_times[-1] - r.chunk_times[0])
        for r in results
        if r.ok and len(r.chunk_times) > 1
    ]
    report = {
        "machine": f"{platform.machine()} {platform.system()}",
        "model": args.model,
        "streams": args.streams,
        "concurrent": args.concurrent,
        "tokens": args.tokens,
        "rate_hz": args.rate,
        "decode_tok_s": rates,
        "failed": sum(not r.ok for r in results),
        **thread_profiles(raw_path.read_text(), args.top),
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
