"""One chat request with one 1024×1024 image: mlxd over HTTP vs mlx-vlm's `stream_generate`.

Same random-weight Qwen2-VL model (built here with mlx-vlm's own classes, tests/tiny_vlm.py),
same image, prompt and output length, in the same run. The server runs as its own process
(`mlxd serve`, as users run it: the image travels as a PNG data: URI and is decoded at the
edge); this process is the HTTP client and, in between, runs mlx-vlm's `stream_generate` on the
same model. Runs are interleaved (mlx-vlm, mlxd, mlxd, mlx-vlm, ...) so drift hits both; medians
and spread are reported.

- TTFT: request start to first token (mlxd: HTTP + PNG decode + processor + vision tower +
  prefill; mlx-vlm: processor + vision tower + prefill). Each run uses a new image, so neither
  side reuses anything.
- Decode rate = (tokens - 1) / (time of last token - time of first token), both sides. The
  model never emits end-of-sequence (`never_stop`), so both sides generate exactly --tokens.
- Follow-up TTFT: the same conversation one turn later, resending the same image (what agents
  do with a screenshot): mlxd resumes from its prefix cache through the image; mlx-vlm's
  generate recomputes the whole prompt.

Shapes: `qwen2-vl-2b` (default; Qwen2-VL-2B's text and vision sizes, bfloat16, 1,369 image
tokens for a 1024×1024 image with Qwen's own pixel bounds) for the GPU machine; `tiny` (a few MB,
float32, the same processor) for a CPU smoke run.

    python bench/vision.py [--shape tiny|qwen2-vl-2b] [--runs 5] [--tokens 128]
        [--out bench/results/vision.json]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

BLAS = blas.preload_from_env()

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from bench import harness  # noqa: E402

# Qwen2-VL's own image processor bounds (a 1024×1024 image becomes 1036×1036: 37×37 tokens).
PROCESSOR = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "qwen2-vl-2b": {
        "text": {
            "hidden_size": 1536,
            "num_hidden_layers": 28,
            "intermediate_size": 8960,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 32768,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "tie_word_embeddings": True,
        },
        "vision": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16},
        "processor": PROCESSOR,
    },
    "tiny": {
        "text": {"max_position_embeddings": 32768, "tie_word_embeddings": True},
        "processor": PROCESSOR,
    },
}
QUESTION = "Describe this screenshot in detail."
FOLLOW_UP = "Now list every colour you can see."


def png_of(seed: int) -> tuple[bytes, Any]:
    """A 1024×1024 RGB image of smooth random colour blocks (PNG bytes, PIL image)."""
    from PIL import Image

    blocks = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), np.uint8)
    pixels = np.kron(blocks, np.ones((64, 64, 1), np.uint8))
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), image


def conversation(png: bytes, follow_up: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The OpenAI messages (image as a data: URI) and the same as template messages."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    first_api = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": uri}},
            ],
        }
    ]
    first_template = [
        {"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image"}]}
    ]
    if not follow_up:
        return first_api, first_template
    more = [
        {"role": "assistant", "content": "A grid of coloured squares."},
        {"role": "user", "content": FOLLOW_UP},
    ]
    return first_api + more, first_template + more


def served(server: harness.Server, messages: list[dict[str, Any]], tokens: int) -> dict[str, float]:
    result = harness.stream_chat(server, messages, tokens)  # type: ignore[arg-type]
    if not result.ok:
        raise RuntimeError(f"mlxd: {result.error}")
    span = result.chunk_times[-1] - result.chunk_times[0]
    return {"ttft_s": result.ttft_s, "decode_tok_s": (result.tokens - 1) / span}


def reference(model: Any, processor: Any, prompt: str, image: Any, tokens: int) -> dict[str, float]:
    from mlx_vlm.generate import stream_generate

    start = time.perf_counter()
    first = last = 0.0
    count = 0
    for _ in stream_generate(
        model, processor, prompt, image=[image], max_tokens=tokens, temperature=0.0
    ):
        last = time.perf_counter()
        first = first or last
        count += 1
    return {"ttft_s": first - start, "decode_tok_s": (count - 1) / (last - first)}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-vl-2b")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench/results/vision.json"))
    args = parser.parse_args()

    from mlx_vlm.utils import load

    from tests.tiny_vlm import save_tiny_vlm

    directory = Path(tempfile.mkdtemp(prefix="mlxd-vision-bench-")) / f"random-{args.shape}"
    dtype = mx.bfloat16 if args.shape == "qwen2-vl-2b" else mx.float32
    save_tiny_vlm("qwen2_vl", directory, shape=SHAPES[args.shape], dtype=dtype, never_stop=True)
    model, processor = load(str(directory))
    tokenizer = getattr(processor, "tokenizer", processor)
    server = harness.start_mlxd(str(directory), directory.name)
    server.model = server.client.get(f"{server.url}/v1/models").json()["data"][0]["id"]
    rows: dict[str, list[dict[str, float]]] = {"mlxd": [], "mlx_vlm": []}
    follow: dict[str, list[float]] = {"mlxd": [], "mlx_vlm": []}
    try:
        for run in range(args.runs + 1):  # run 0 warms both up (kernels, first shapes)
            png, image = png_of(run)
            order = ["mlx_vlm", "mlxd"] if run % 2 else ["mlxd", "mlx_vlm"]
            for follow_up in (False, True):
                api, template = conversation(png, follow_up)
                prompt = tokenizer.apply_chat_template(
                    template, tokenize=False, add_generation_prompt=True
                )
                for side in order:
                    if side == "mlxd":
                        figures = served(server, api, args.tokens)
                    else:
                        figures = reference(model, processor, prompt, image, args.tokens)
                    if run and follow_up:
                        follow[side].append(figures["ttft_s"])
                    elif run:
                        rows[side].append(figures)
            if run:
                print(
                    f"run {run}: TTFT mlx-vlm {rows['mlx_vlm'][-1]['ttft_s']:.3f}s "
                    f"mlxd {rows['mlxd'][-1]['ttft_s']:.3f}s; decode mlx-vlm "
                    f"{rows['mlx_vlm'][-1]['decode_tok_s']:.1f} mlxd "
                    f"{rows['mlxd'][-1]['decode_tok_s']:.1f} tok/s; follow-up TTFT mlx-vlm "
                    f"{follow['mlx_vlm'][-1]:.3f}s mlxd {follow['mlxd'][-1]:.3f}s",
                    flush=True,
                )
    finally:
        server.stop()
    report: dict[str, Any] = {
        "shape": args.shape,
        "device": str(mx.default_device()),
        "machine": platform.platform(),
        "blas": BLAS.library or "bundled",
        "runs": args.runs,
        "tokens": args.tokens,
        "image": "1024x1024 PNG",
    }
    for side in ("mlxd", "mlx_vlm"):
        report[side] = {
            "ttft_s": summary([r["ttft_s"] for r in rows[side]]),
            "decode_tok_s": summary([r["decode_tok_s"] for r in rows[side]]),
            "follow_up_ttft_s": summary(follow[side]),
        }
    mlxd, ref = report["mlxd"], report["mlx_vlm"]
    report["ratios"] = {
        "ttft_mlxd_over_mlx_vlm": mlxd["ttft_s"]["median"] / ref["ttft_s"]["median"],
        "decode_mlxd_over_mlx_vlm": mlxd["decode_tok_s"]["median"] / ref["decode_tok_s"]["median"],
        "follow_up_ttft_mlxd_over_mlx_vlm": mlxd["follow_up_ttft_s"]["median"]
        / ref["follow_up_ttft_s"]["median"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
