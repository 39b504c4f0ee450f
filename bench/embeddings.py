"""Embedding throughput: mlxd's /v1/embeddings against sentence-transformers on the same weights
(the store's all-MiniLM-L6-v2 directory loads in both), in embeddings per second, for requests
of 1, 32 and 256 sentences.

mlxd is timed end to end over HTTP (a real uvicorn on 127.0.0.1, JSON in and out, float
vectors); sentence-transformers runs `encode(batch)` in its own process (no HTTP) on torch's
CPU backend — or CUDA with `--device cuda`. Sentences are short English lines of 8–20 tokens,
so per-request overhead weighs most at batch 1.

sentence-transformers needs torch, which mlxd does not depend on: run the baseline with a
Python that has it, separately, and the mlxd side with mlxd's venv:
    /path/to/venv-with-sentence-transformers/bin/python bench/embeddings.py --baseline
    .venv/bin/python bench/embeddings.py
Each prints one JSON line per batch size: {"system", "batch", "per_s", "runs"} (the median of
`--runs` timed runs, after one warm-up run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-minilm-l6-v2"
SUBJECTS = ["A man", "The girl", "An old woman", "Two children", "A chef", "The pilot"]
ACTIONS = ["is eating food", "is riding a horse", "is carrying a baby across the street",
           "plays the guitar on a small stage", "reads a long book about ships"]  # fmt: skip
PLACES = ["", " in the park", " at night", " near the old harbour wall"]


def sentences(count: int) -> list[str]:
    return [
        f"{SUBJECTS[i % 6]} {ACTIONS[(i // 6) % 5]}{PLACES[(i // 30) % 4]}." for i in range(count)
    ]


def timed(run: Callable[[list[str]], object], batch: int, runs: int) -> float:
    """Median embeddings per second over `runs` requests of `batch` sentences (after a warm-up);
    enough requests per run that each run takes at least ~1 s at batch 1."""
    texts = sentences(batch)
    repeats = max(1, 64 // batch)
    run(texts)
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(repeats):
            run(texts)
        rates.append(batch * repeats / (time.perf_counter() - start))
    return statistics.median(rates)


def baseline(args: argparse.Namespace) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(args.model_dir), device=args.device)
    for batch in args.batches:
        rate = timed(lambda texts: model.encode(texts, batch_size=len(texts)), batch, args.runs)
        report("sentence-transformers", batch, rate, args.runs)


def mlxd(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from engines import blas

    blas.preload_from_env()
    import httpx

    from server.app import create_app
    from server.settings import Settings
    from tests.servers import serve

    app = create_app(Settings(speech_model="", embedding_model=MODEL))
    with serve(app) as url, httpx.Client(base_url=url, timeout=600) as http:

        def embed(texts: list[str]) -> object:
            body = {"model": MODEL, "input": texts, "encoding_format": "float"}
            response = http.post("/v1/embeddings", json=body)
            response.raise_for_status()
            return response.json()

        for batch in args.batches:
            report("mlxd", batch, timed(embed, batch, args.runs), args.runs)


def report(system: str, batch: int, rate: float, runs: int) -> None:
    print(json.dumps({"system": system, "batch": batch, "per_s": round(rate, 1), "runs": runs}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", action="store_true", help="time sentence-transformers")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="sentence-transformers' torch device")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path.home() / ".cache" / "mlxd" / "models" / MODEL,
        help="the checkpoint directory (default: mlxd's store entry)",
    )
    args = parser.parse_args()
    baseline(args) if args.baseline else mlxd(args)


if __name__ == "__main__":
    main()
