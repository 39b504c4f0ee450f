"""Speech-to-text benchmark: mlxd's /v1/audio/transcriptions against mlx-whisper's `transcribe`
on the same weights (the store entry loads in both), in the same run, interleaved.

Measures, with the real-time factor RTF = processing seconds / audio seconds:
- one request of the 24.7 s concatenation of the five LibriVox clips;
- one request of a 5-minute file (the clips repeated with short pauses);
- with --concurrency N: N simultaneous requests of the 24.7 s file against N one at a time
  (aggregate audio seconds per second; mlxd batches windows of concurrent requests), the pair
  repeated --concurrency-runs times, interleaved.

mlxd runs as its own process (`mlxd serve`) and is timed end to end over HTTP (upload, decode,
features, model, response); mlx-whisper runs in this process on the decoded samples (no file
decoding), greedy with its default fallback — as mlxd does at temperature 0.

Needs mlx-whisper, installed without its declared torch: `make bench-asr` does it and runs this.
Usage: MLXD_HOME=.mlxd-home .venv/bin/python bench/asr.py --runs 3 [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import median, start_mlxd  # noqa: E402
from engines import blas  # noqa: E402

blas.preload_from_env()

from engines.weights.embedded import SMOLLM2  # noqa: E402
from engines.weights.store import ModelStore, default_home  # noqa: E402
from tests.speech import encode, librivox_clips, silence  # noqa: E402

MODEL = "whisper-tiny.en"


def five_clips() -> np.ndarray:
    return np.concatenate([clip.samples for clip in librivox_clips()])


def five_minutes() -> np.ndarray:
    clips = [clip.samples for clip in librivox_clips()]
    pieces: list[np.ndarray] = []
    total = 0
    while total < 300 * 16000:
        for clip in clips:
            pieces += [clip, silence(0.6)]
            total += clip.size + 9600
    return np.concatenate(pieces)[: 300 * 16000]


def mlxd_once(url: str, audio: bytes) -> tuple[float, str]:
    start = time.perf_counter()
    response = httpx.post(
        f"{url}/v1/audio/transcriptions",
        data={"model": MODEL},
        files={"file": ("audio.wav", audio)},
        timeout=3600,
    )
    response.raise_for_status()
    return time.perf_counter() - start, response.json()["text"]


def mlx_whisper_once(model_dir: Path, samples: np.ndarray) -> tuple[float, str]:
    import mlx_whisper

    start = time.perf_counter()
    result = mlx_whisper.transcribe(
        samples, path_or_hf_repo=str(model_dir), fp16=False, language="en", verbose=None
    )
    return time.perf_counter() - start, str(result["text"]).strip()


def spread(values: list[float]) -> dict[str, float]:
    return {"median": median(values), "min": min(values), "max": max(values)}


def concurrency(
    url: str, wav: bytes, seconds: float, args: argparse.Namespace
) -> dict[str, object]:
    """N requests one at a time against the same N at once, interleaved `concurrency_runs`
    times; the ratio of the two times, per pair."""
    n = args.concurrency
    sequential, concurrent = [], []
    for _ in range(args.concurrency_runs):
        start = time.perf_counter()
        for _ in range(n):
            mlxd_once(url, wav)
        sequential.append(time.perf_counter() - start)
        with ThreadPoolExecutor(n) as pool:
            start = time.perf_counter()
            list(pool.map(lambda _: mlxd_once(url, wav), range(n)))
            concurrent.append(time.perf_counter() - start)
    return {
        "requests": n,
        "audio_seconds_per_second_sequential": spread([n * seconds / t for t in sequential]),
        "audio_seconds_per_second_concurrent": spread([n * seconds / t for t in concurrent]),
        "speedup": spread([s / c for s, c in zip(sequential, concurrent, strict=True)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--long-runs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--concurrency-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "asr.json")
    args = parser.parse_args()

    model_dir = ModelStore(default_home()).path_for(MODEL)
    short, long = five_clips(), five_minutes()
    inputs = {
        "24.7s": (short, encode(short, "wav", "pcm_s16le"), args.runs),
        "5min": (long, encode(long, "wav", "pcm_s16le"), args.long_runs),
    }
    server = start_mlxd(SMOLLM2.name, MODEL, {"MLXD_SPEECH_MODEL": MODEL})
    results: dict[str, object] = {"model": MODEL}
    try:
        mlxd_once(server.url, inputs["24.7s"][1])  # warm-up: first-call allocations
        mlx_whisper_once(model_dir, short)
        for name, (samples, wav, runs) in inputs.items():
            if not runs:
                continue
            seconds = samples.size / 16000
            ours, theirs, texts = [], [], {}
            for _ in range(runs):
                elapsed, texts["mlxd"] = mlxd_once(server.url, wav)
                ours.append(elapsed / seconds)
                elapsed, texts["mlx-whisper"] = mlx_whisper_once(model_dir, samples)
                theirs.append(elapsed / seconds)
            results[name] = {
                "audio_seconds": seconds,
                "rtf_mlxd": spread(ours),
                "rtf_mlx_whisper": spread(theirs),
                "speedup": median(theirs) / median(ours),
                "same_text": texts["mlxd"] == texts["mlx-whisper"],
                "text_mlxd": texts["mlxd"][:200],
            }
            print(json.dumps({name: results[name]}, indent=2), flush=True)
        if args.concurrency:
            results["concurrency"] = concurrency(
                server.url, inputs["24.7s"][1], short.size / 16000, args
            )
            print(json.dumps({"concurrency": results["concurrency"]}, indent=2), flush=True)
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
