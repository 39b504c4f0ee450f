"""Experiment for issue 25 item 2: is a decode step compiled with `mx.compile` over fixed-capacity
KV buffers faster than mlx-lm's own loop, on one stream? In-process, same model, interleaved runs.

The compiled step takes (token, offset, K/V buffers of every layer) and returns (next token, the
updated buffers): the buffers have a fixed capacity (the prompt plus the tokens to generate, rounded
up to a bucket), so every step has the same shapes and the function is traced once; the new K/V row
is written with `mx.slice_update` at an offset held in an array, rotary embeddings read the same
array, and attention masks the capacity not yet written. The prompt is prefilled with mlx-lm's own
caches and copied into the buffers. Greedy tokens of both paths are compared (they must agree;
the report says how many do).

    python bench/compiled_step.py [--model NAME_OR_DIR] [--runs 5] [--tokens 128]

This is a measurement, not the server's path: the engine decodes through mlx-lm's caches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import blas

blas.preload_from_env()

import mlx.core as mx  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from engines.weights.checkpoint import load_checkpoint  # noqa: E402
from engines.weights.store import ModelStore, default_home  # noqa: E402

BUCKET = 256  # capacity multiple: one trace serves every length below it


class StaticKVCache:
    """One layer's K/V in fixed-capacity buffers; `offset` is an int32 array of shape (1,)."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array) -> None:
        self.keys, self.values, self.offset = keys, values, offset

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys = mx.slice_update(self.keys, keys, self.offset, axes=(2,))
        self.values = mx.slice_update(self.values, values, self.offset, axes=(2,))
        return self.keys, self.values

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> Any:
        """Positions written so far, the new one included (a one-token step: n == 1)."""
        assert n == 1 and window_size is None
        return mx.arange(self.keys.shape[2])[None] <= self.offset


def compiled_decoder(model: Any, layers: int) -> Any:
    def step(token: mx.array, offset: mx.array, *buffers: mx.array) -> list[mx.array]:
        caches = [StaticKVCache(buffers[2 * i], buffers[2 * i + 1], offset) for i in range(layers)]
        logits = model(token.reshape(1, 1), cache=caches)[:, -1, :]
        out = [mx.argmax(logits, axis=-1).astype(mx.int32)]
        for cache in caches:
            out += [cache.keys, cache.values]
        return out

    return mx.compile(step)


def run_compiled(model: Any, prompt: list[int], tokens: int) -> tuple[list[int], float]:
    """Greedy tokens and decode tok/s (after the first token) of the compiled path."""
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt)[None], cache=cache)[:, -1, :]
    first = mx.argmax(logits, axis=-1).astype(mx.int32)
    capacity = -(-(len(prompt) + tokens) // BUCKET) * BUCKET
    buffers: list[mx.array] = []
    for layer in cache:
        for filled in (layer.keys, layer.values):
            b, h, _, d = filled.shape
            written = filled[..., : layer.offset, :]
            buffer = mx.zeros((b, h, capacity, d), filled.dtype)
            buffers.append(mx.slice_update(buffer, written, mx.array([0]), axes=(2,)))
    mx.eval(first, *buffers)
    step = compiled_decoder(model, len(cache))
    offset = mx.array([len(prompt)], mx.int32)
    out = [int(first.item())]
    token = first
    start = time.perf_counter()
    # One step in flight while the previous token is read, as mlx-lm's generate_step does.
    result = step(token, offset, *buffers)
    mx.async_eval(result)
    for _ in range(tokens - 1):
        token, buffers = result[0], result[1:]
        offset = offset + 1
        following = step(token, offset, *buffers)
        mx.async_eval(following)
        out.append(int(token.item()))
        result = following
    elapsed = time.perf_counter() - start
    return out[:tokens], (tokens - 1) / elapsed


def run_mlx_lm(model: Any, prompt: list[int], tokens: int) -> tuple[list[int], float]:
    out: list[int] = []
    start = 0.0
    for token, _ in generate_step(mx.array(prompt), model, max_tokens=tokens):
        out.append(int(token))
        if len(out) == 1:
            start = time.perf_counter()
    return out, (len(out) - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench/results/compiled_step.json"))
    args = parser.parse_args()
    path = Path(args.model)
    if not path.is_dir():
        path = ModelStore(default_home()).path_for(args.model)
    model, tokenizer = load_checkpoint(path)  # as mlxd loads it: float32 where marked
    prompt = tokenizer.encode("Write a long story about a lighthouse keeper and the sea.")
    run_mlx_lm(model, prompt, 8)  # kernels compile on first use, on both paths
    run_compiled(model, prompt, 8)
    raw_rates, compiled_rates, agree = [], [], []
    for _ in range(args.runs):
        reference, raw_rate = run_mlx_lm(model, prompt, args.tokens)
        tokens, compiled_rate = run_compiled(model, prompt, args.tokens)
        raw_rates.append(raw_rate)
        compiled_rates.append(compiled_rate)
        pairs = enumerate(zip(reference, tokens, strict=True))
        same = next((i for i, (a, b) in pairs if a != b), len(tokens))
        agree.append(same)
    report = {
        "device": str(mx.default_device()),
        "model": str(path),
        "tokens": args.tokens,
        "raw_tok_s": raw_rates,
        "compiled_tok_s": compiled_rates,
        "ratio_of_medians": statistics.median(compiled_rates) / statistics.median(raw_rates),
        "tokens_agreeing_before_first_difference": agree,
    }
    print(json.dumps(report, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
