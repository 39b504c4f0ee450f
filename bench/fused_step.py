"""One stream of raw mlx-lm decoding, with and without engines/llm/fused_projections.py: the same
checkpoint loaded three times — "plain" (the layers as mlx-lm builds them), "fused" (projections
fused, `install(whole_blocks=False)`) and "lean" (fused, and whole blocks computed as `LeanBlock`s:
what the engine installs) — all decoded greedily by mlx-lm's own `generate_step` from the same
prompt, runs interleaved (each run's order rotates).

The fused sides are fused whatever the device (`install` directly, not the engine's CUDA-only
default): run it on Metal to decide whether fusing should be on there by default.

Reports each side's decode rate (median, min–max), the ratios of medians to plain's, the
primitives in one decode step's graph (`mx.export_to_dot`, views included), whether the greedy
tokens are identical, and how far each fused side's logits are from plain's when all are fed the
plain side's tokens (teacher-forced: the largest difference, the logits' own scale, and how many
steps pick the same greedy token).

    python bench/fused_step.py --model DIR [--runs 9] [--tokens 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

blas.preload_from_env()

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from engines.llm import fused_projections  # noqa: E402
from engines.weights.checkpoint import load_checkpoint  # noqa: E402

PROMPT = list(range(100, 164))
SIDES = ("plain", "fused", "lean")  # 64 token ids: a random model's output does not depend on text


def decode(model: Any, tokens: int) -> tuple[float, list[int]]:
    """Decode rate (tokens after the first / their time) and the greedy tokens."""
    out: list[int] = []
    first = last = 0.0
    for token, _ in generate_step(mx.array(PROMPT), model, max_tokens=tokens):
        last = time.perf_counter()
        first = first or last
        out.append(int(token))
    return (len(out) - 1) / (last - first), out


def largest(values: mx.array) -> float:
    """The largest magnitude in `values`, as a Python float."""
    return float(np.abs(np.array(values)).max())


def forced_agreement(plain: Any, fused: Any, tokens: list[int]) -> dict[str, Any]:
    """Both models fed the prompt, then `tokens`: their logits' largest difference, the largest
    logit, and on how many steps the greedy tokens agree."""
    caches = [make_prompt_cache(plain), make_prompt_cache(fused)]
    inputs = [PROMPT, *([token] for token in tokens[:-1])]
    difference = scale = 0.0
    agree = 0
    for step in inputs:
        ids = mx.array([step])
        a = plain(ids, cache=caches[0])[0, -1].astype(mx.float32)
        b = fused(ids, cache=caches[1])[0, -1].astype(mx.float32)
        difference = max(difference, largest(a - b))
        scale = max(scale, largest(a))
        agree += int(mx.argmax(a).item() == mx.argmax(b).item())
    return {"max_difference": difference, "max_logit": scale, "steps": len(inputs), "agree": agree}


def step_kernels(model: Any) -> dict[str, Any]:
    """Primitives in one decode step's graph (after a prompt), by name."""
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([PROMPT]), cache=cache))
    logits = model(mx.array([[PROMPT[-1]]]), cache=cache)
    dot = io.StringIO()
    mx.export_to_dot(dot, logits)
    names = Counter(re.findall(r'label ="([A-Za-z]\w*)"', dot.getvalue()))
    return {"total": sum(names.values()), "by_primitive": dict(names.most_common())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("bench/results/fused_step.json"))
    args = parser.parse_args()

    models = {side: load_checkpoint(args.model)[0] for side in SIDES}
    layers = fused_projections.install(models["fused"], whole_blocks=False)
    fused_projections.install(models["lean"])
    prompt = mx.array([PROMPT])
    reference = models["plain"](prompt)
    differences = {
        side: mx.abs(reference - models[side](prompt)).max().item() for side in SIDES[1:]
    }
    kernels = {side: step_kernels(model) for side, model in models.items()}
    for model in models.values():
        decode(model, min(args.tokens, 32))  # kernels planned per shape on first use
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    outputs: dict[str, list[int]] = {}
    for run in range(args.runs):
        order = SIDES[run % len(SIDES) :] + SIDES[: run % len(SIDES)]
        for side in order:
            rate, tokens = decode(models[side], args.tokens)
            rates[side].append(rate)
            outputs.setdefault(side, tokens)
        print(json.dumps({side: round(values[-1], 1) for side, values in rates.items()}))
    medians = {side: statistics.median(values) for side, values in rates.items()}
    report = {
        "machine": f"{platform.machine()} {platform.system()}",
        "device": str(mx.default_device()),
        "model": str(args.model),
        "runs": args.runs,
        "tokens": args.tokens,
        "fused_layers": layers,
        "kernels_per_step": kernels,
        "prompt_logits_max_difference": differences,
        "identical_greedy_tokens": {side: outputs["plain"] == outputs[side] for side in SIDES[1:]},
        "lean_tokens_identical_to_fused": outputs["fused"] == outputs["lean"],
        "teacher_forced": {
            side: forced_agreement(models["plain"], models[side], outputs["plain"])
            for side in SIDES[1:]
        },
        "rates": {
            side: {"median": medians[side], "min": min(v), "max": max(v), "runs": v}
            for side, v in rates.items()
        },
        "fused_over_plain": medians["fused"] / medians["plain"],
        "lean_over_plain": medians["lean"] / medians["plain"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "rates"}))
    print(
        f"fused/plain {report['fused_over_plain']:.2f} lean/plain {report['lean_over_plain']:.2f}"
    )


if __name__ == "__main__":
    main()
