"""Structured outputs: decode speed with `response_format: json_schema` on vs off, one stream
and 8 concurrent, on the same server, prompts and output length, interleaved.

The schema (an array of at least 400 integers) cannot be satisfied before `max_tokens`, and the
prompt asks for a long list, so both runs decode the full `max_tokens`. Decode rate = tokens after
the first / time from first to last token (single); for 8 streams, the steady rate while all are
decoding (harness.steady_decode_rate).

Usage: MLXD_HOME=.mlxd-home .venv/bin/python bench/structured.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import Server, median, start_mlxd, steady_decode_rate, stream_chat  # noqa: E402
from engines.weights.embedded import SMOLLM2  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write the numbers from 1 to 400, comma separated."}]
SCHEMA = {"type": "array", "items": {"type": "integer"}, "minItems": 400}
JSON_SCHEMA: dict[str, object] = {
    "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}
}


def single(server: Server, constrained: bool, tokens: int) -> float:
    result = stream_chat(server, MESSAGES, tokens, extra=JSON_SCHEMA if constrained else None)
    assert result.ok, result.error
    return (len(result.chunk_times) - 1) / (result.chunk_times[-1] - result.chunk_times[0])


def concurrent(server: Server, constrained: bool, tokens: int, streams: int) -> float:
    extra = JSON_SCHEMA if constrained else None
    with ThreadPoolExecutor(streams) as pool:
        results = list(
            pool.map(lambda _: stream_chat(server, MESSAGES, tokens, extra=extra), range(streams))
        )
    assert all(r.ok for r in results), [r.error for r in results]
    return steady_decode_rate(results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "structured.json")
    args = parser.parse_args()
    server = start_mlxd(SMOLLM2.name, SMOLLM2.name, {"MLXD_SPEECH_MODEL": ""})
    rates: dict[str, list[float]] = {k: [] for k in ("off_1", "on_1", "off_8", "on_8")}
    try:
        single(server, True, 8)  # warm-up (builds the grammar tokenizer)
        for _ in range(args.runs):
            rates["off_1"].append(single(server, False, args.tokens))
            rates["on_1"].append(single(server, True, args.tokens))
            rates["off_8"].append(concurrent(server, False, args.tokens, 8))
            rates["on_8"].append(concurrent(server, True, args.tokens, 8))
    finally:
        server.stop()
    summary = {
        name: {"median": median(values), "min": min(values), "max": max(values)}
        for name, values in rates.items()
    }
    summary["ratio_1"] = {"on/off": median(rates["on_1"]) / median(rates["off_1"])}
    summary["ratio_8"] = {"on/off": median(rates["on_8"]) / median(rates["off_8"])}
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
