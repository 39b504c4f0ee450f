"""Batch width and admission queue sized to the device and model, unless set explicitly.

A fixed 32 rows / 64 waiting fits a laptop but starves a data-centre GPU: a 1B model on a 141 GB
GPU has room for hundreds of rows, a 16 GB Mac for a few dozen. The default `max_batch` is the
number of rows of `ROW_TOKENS` tokens whose KV cache (per cache kind, quantized bytes when
`kv_bits` is set: `CacheProfile.row_bytes`) fits the engine's KV budget, between `MIN_BATCH` and
`MAX_BATCH`; the default `max_waiting` is `WAITING_PER_ROW` times that. Explicit settings (the
models file's `max_batch`, `MLXD_MAX_BATCH`, `MLXD_MAX_WAITING`) always win.

The width only bounds rows: admission still projects each request's real length against the KV
budget, so a batch of long requests stays within memory whatever the width.

Prefill needs room beyond the KV cache while it runs: `pass_bytes` is the transient memory of one
forward pass (one layer's activations, unfused attention scores on the CPU, the logits of every
position read), `prefill_peak_bytes` the largest of a chunked prefill (tests/engines/
test_families_memory.py checks both against MLX's measured peak). The default KV budget leaves that
much free for a full prefill chunk (engine.default_kv_budget's `reserve_bytes`), so the rows
admitted against it never leave the prefill without room.

Pure arithmetic (no MLX): the engine calls it at load with its measured profile, `mlxd doctor`
with an estimate from the checkpoint's config.json.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ROW_TOKENS = 4096  # the request length a default row is sized for (prompt + output)
MIN_BATCH = 8
MAX_BATCH = 512
WAITING_PER_ROW = 2  # requests queued per batch row (the old defaults: 32 rows, 64 waiting)


@dataclass(frozen=True)
class SizedLimits:
    max_batch: int
    max_waiting: int
    reason: str  # one line: where each figure came from


def size_limits(
    kv_budget_bytes: int,
    row_bytes: Callable[[int], int],
    max_batch: int | None = None,
    max_waiting: int | None = None,
) -> SizedLimits:
    """The limits in force: explicit ones as given, the others sized to the KV budget."""
    per_row = max(1, row_bytes(ROW_TOKENS))
    fitting = kv_budget_bytes // per_row
    sized = min(MAX_BATCH, max(MIN_BATCH, fitting))
    budget = (
        f"KV budget {kv_budget_bytes / 2**30:.1f} GiB / {per_row / 2**20:.1f} MiB per "
        f"{ROW_TOKENS}-token row = {fitting} rows"
    )
    if max_batch is not None:
        batch, batch_why = max_batch, "max_batch set explicitly"
    else:
        batch = sized
        bounded = f", kept within {MIN_BATCH}..{MAX_BATCH}" if sized != fitting else ""
        batch_why = f"max_batch sized to the device: {budget}{bounded}"
    if max_waiting is not None:
        waiting, waiting_why = max_waiting, "max_waiting set explicitly"
    else:
        waiting = WAITING_PER_ROW * batch
        waiting_why = f"max_waiting = {WAITING_PER_ROW} x max_batch"
    return SizedLimits(batch, waiting, f"{batch_why}; {waiting_why}")


def kv_bytes_per_token(
    config: Mapping[str, Any], kv_bits: int | None = None, group: int = 64
) -> int:
    """An estimate from a checkpoint's config.json (for `mlxd doctor`, which loads no model):
    keys and values of every layer in the model's dtype, or quantized to `kv_bits`."""
    text = config.get("text_config") or config
    layers = int(text.get("num_hidden_layers") or 0)
    heads = int(text.get("num_attention_heads") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size") or 0) // heads)
    dtype = str(text.get("torch_dtype") or config.get("torch_dtype") or "bfloat16")
    width = 4 if dtype == "float32" else 2
    if kv_bits:  # packed values plus a scale and a bias per group
        per_vector = head_dim * kv_bits // 8 + 2 * width * (head_dim // group)
    else:
        per_vector = head_dim * width
    return 2 * layers * kv_heads * per_vector


@dataclass(frozen=True)
class PassShape:
    """What the transient memory of a forward pass depends on, read from config.json."""

    hidden: int
    intermediate: int  # the widest feed-forward (dense or the experts' sum per token)
    heads: int
    vocab: int
    itemsize: int  # bytes per activation (the model's dtype)

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> PassShape:
        text = config.get("text_config") or config
        hidden = int(text.get("hidden_size") or 0)
        dtype = str(text.get("torch_dtype") or config.get("torch_dtype") or "bfloat16")
        return cls(
            hidden=hidden,
            intermediate=int(text.get("intermediate_size") or 4 * hidden),
            heads=int(text.get("num_attention_heads") or 1),
            vocab=int(text.get("vocab_size") or config.get("vocab_size") or 0),
            itemsize=4 if dtype == "float32" else 2,
        )


# Activations alive at once in one layer of a pass, per token, in units of the feed-forward and
# hidden widths: the feed-forward's gate, up and product with their inputs and outputs, the
# residual stream and the attention's projections (fitted to MLX's CPU peak memory, see
# tests/engines/test_families_memory.py; about 5.4 x intermediate with the hidden terms folded in).
FEED_FORWARD_COPIES = 6
HIDDEN_COPIES = 8


def pass_bytes(
    shape: PassShape, tokens: int, context: int, logit_positions: int, fused_attention: bool
) -> int:
    """Transient memory of one forward pass of `tokens` query tokens (all rows together) over
    `context` cached keys, on top of the weights and the caches it grows. MLX frees a layer's
    intermediates before the next layer runs, so the peak is one layer's plus the logits of
    every position the caller reads: slicing the last position of a pass's logits still computes
    them all (`logits[:, -1]` costs `tokens` x vocab). Unfused attention (MLX's CPU backend)
    also materializes the scores, heads x tokens x keys in float32; fused kernels (Metal, CUDA)
    do not."""
    layer = tokens * (FEED_FORWARD_COPIES * shape.intermediate + HIDDEN_COPIES * shape.hidden)
    scores = 0 if fused_attention else shape.heads * tokens * (context + tokens) * 4
    logits = logit_positions * shape.vocab * shape.itemsize
    return layer * shape.itemsize + scores + logits


def prefill_peak_bytes(
    shape: PassShape, prompt_tokens: int, chunk: int, fused_attention: bool, every_logit: bool
) -> int:
    """The largest transient of prefilling a `prompt_tokens` prompt as the engine does it, in
    passes of at most `chunk` tokens: the last full pass, over the longest context. Chunked
    passes read no logits (only the cache is computed) and the prompt's last token reads one
    row; a joint prefill that slices the last position off a pass (`every_logit`) computes the
    logits of all its positions."""
    tokens = min(chunk, prompt_tokens)
    logits = tokens if every_logit else 1
    return pass_bytes(shape, tokens, prompt_tokens - tokens, logits, fused_attention)
