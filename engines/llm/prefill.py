"""Prompt processing on the engine thread: one request's prompt fed into its cache in chunks
(optionally scoring every prompt token), several fresh prompts in one padded pass, or several
prompts resuming from the prefix cache with the same number of tokens left in one pass (their
caches merged, left-padded). Batch caches come from the layer caches' own `merge`: plain KV
prompts are left-padded (`prepare(left_padding=...)`); other kinds are right-padded with their
lengths and `finalize`d after the pass, as mlx-lm's BatchGenerator does, so that sliding windows
and SSM states never take in the padding.

Prompts with images (engines/vlm) carry `embeddings` (their input embeddings, the images'
features merged in) and, for families whose positions are not the cache offset (Qwen's mRoPE),
`positions`: both are fed in step with `to_prefill` in place of its tokens' embeddings and
positions, and such a prompt is always prefilled alone (never grouped). Without them a prefill
calls the model exactly as a text model.

Invariant: a `Prefill` always keeps its last prompt token unfed — the pass over it yields the
logits of the first output token (see `LLMEngine._start_choices`).

Query lengths may be bucketed (`bucket` > 1, chosen per device by the engine): every pass is
right-padded to a multiple of `bucket` tokens and the padding trimmed from the KV caches after it,
so that passes over new prompt lengths reuse the shapes of earlier ones (MLX's CUDA backend plans
kernels per shape on first use). Causal attention keeps the padding out of every real position.
The engine buckets only plain KV caches (`CacheProfile.plain`): a sliding-window or recurrent
cache would keep the padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from engines.llm import caches
from engines.llm.detokenize import IncrementalDetokenizer
from engines.llm.sampling import TokenSampler, top_k_logprobs
from engines.llm.sequence import EventSink, Vocabulary
from engines.readback import host_list
from engines.types import GenerationRequest, TokenLogprob


@dataclass
class Prefill:
    """A request whose prompt is being fed into its KV cache (before its choices decode)."""

    uid: int
    request: GenerationRequest
    stream: EventSink
    cache: list[Any]
    sampler: TokenSampler
    to_prefill: list[int]
    cached_tokens: int = 0  # prompt tokens whose cache came from the prefix cache
    embeddings: mx.array | None = None  # (1, len(to_prefill), hidden): fed instead of tokens
    positions: mx.array | None = None  # (..., 1, len(to_prefill)): position ids to feed
    scores: list[tuple[float, tuple[tuple[int, float], ...]]] = field(default_factory=list)

    @property
    def shareable(self) -> bool:
        """Single-choice and unscored: may share a forward pass with others."""
        request = self.request
        return (
            request.n == 1
            and not request.prompt_logprobs
            and request.max_tokens > 0
            and self.embeddings is None
            and self.positions is None
        )

    @property
    def groupable(self) -> bool:
        """Fresh and shareable: may be prefilled together with other fresh prompts."""
        return (
            self.shareable
            and not self.cached_tokens
            and len(self.to_prefill) == len(self.request.prompt_tokens) > 1
        )

    def feed(self, model: Any, budget: int, bucket: int = 1) -> int:
        """Feed up to `budget` tokens (never the last one); return how many were fed."""
        take = min(budget, len(self.to_prefill) - 1)
        if take <= 0:
            return 0
        logits = forward(model, [self.to_prefill[:take]], self.cache, bucket, **self._inputs(take))
        if self.request.prompt_logprobs:
            self._score(logits[0], self.to_prefill[1 : take + 1])
        caches.evaluate(self.cache)
        del self.to_prefill[:take]
        if self.embeddings is not None:
            self.embeddings = self.embeddings[:, take:]
        if self.positions is not None:
            self.positions = self.positions[..., take:]
        return take

    def _inputs(self, take: int) -> dict[str, mx.array]:
        """The model's extra inputs for the next `take` prompt tokens (none for text)."""
        inputs = {}
        if self.embeddings is not None:
            inputs["inputs_embeds"] = self.embeddings[:, :take]
        if self.positions is not None:
            inputs["position_ids"] = self.positions[..., :take]
        return inputs

    def _score(self, logits: mx.array, targets: list[int]) -> None:
        """Logprobs of prompt tokens given what precedes them (completions' echo)."""
        logprobs = logits.astype(mx.float32)
        logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
        chosen = mx.take_along_axis(logprobs, mx.array(targets)[:, None], axis=-1)[:, 0]
        k = self.request.logprobs or 0
        if k > 0:
            top_ids, top_values = top_k_logprobs(logprobs, k)
            ids, values = host_list(top_ids), host_list(top_values)
        else:
            ids, values = [[] for _ in targets], [[] for _ in targets]
        for logprob, row_ids, row_values in zip(host_list(chosen), ids, values, strict=True):
            self.scores.append((logprob, tuple(zip(row_ids, row_values, strict=True))))

    def prompt_logprobs(self, vocabulary: Vocabulary) -> list[TokenLogprob]:
        """Every prompt token with its score (the first one has none: nothing predicts it)."""
        tokens = self.request.prompt_tokens
        detokenizer = IncrementalDetokenizer(vocabulary.tokenizer, skip_special_tokens=False)
        texts = [detokenizer.add(t) for t in tokens]
        texts[-1] += detokenizer.flush()
        scores: list[tuple[float | None, tuple[tuple[int, float], ...]]] = [(None, ())]
        scores += self.scores
        return [
            vocabulary.logprob(token, text, logprob, top)
            for token, text, (logprob, top) in zip(tokens, texts, scores, strict=True)
        ]


def forward(
    model: Any, rows: list[list[int]], cache: list[Any], bucket: int, **inputs: mx.array
) -> mx.array:
    """Logits of `rows` (equal lengths) fed into `cache`, the query right-padded to a multiple
    of `bucket` (repeating each row's last token) and the padding trimmed from the cache (so
    `bucket` > 1 only for caches that trim exactly). `inputs` (a lone row's `inputs_embeds`,
    `position_ids`: the sequence on the last axis but one, and the last) are padded alike."""
    length = len(rows[0])
    padding = -length % bucket
    tokens = mx.array([row + row[-1:] * padding for row in rows])
    if not inputs:
        logits = model(tokens, cache=cache)
    else:
        logits = model(tokens, cache=cache, **_padded(inputs, padding))
    if not padding:
        return logits
    for layer in cache:
        layer.trim(padding)
    return logits[:, :length]


def _padded(inputs: dict[str, mx.array], padding: int) -> dict[str, mx.array]:
    """`inputs` with their last position repeated `padding` times (embeddings: on axis -2)."""
    if not padding:
        return inputs
    padded = {}
    for name, values in inputs.items():
        axis = values.ndim - 2 if name == "inputs_embeds" else values.ndim - 1
        last = mx.take(values, mx.array([values.shape[axis] - 1]), axis=axis)
        repeats = mx.repeat(last, padding, axis=axis)
        padded[name] = mx.concatenate([values, repeats], axis=axis)
    return padded


def choose_group(prefills: list[Prefill], budget: int) -> tuple[list[Prefill], int]:
    """Groupable prefills whose padded width × count fits `budget`: (group, width)."""
    group: list[Prefill] = []
    width = 0
    for prefill in prefills:
        wider = max(width, len(prefill.to_prefill))
        if prefill.groupable and (len(group) + 1) * wider <= budget:
            group.append(prefill)
            width = wider
    return group, width


def prefill_together(
    model: Any, group: list[Prefill], width: int, plain: bool, bucket: int = 1
) -> tuple[list[Any], mx.array]:
    """Run whole prompts (padded to `width`) in one pass: (batch caches, last logits)."""
    lengths = [len(p.to_prefill) for p in group]
    padding = [width - length for length in lengths]
    batch = caches.merge([p.cache for p in group])  # fresh: empty batch caches
    if plain:
        for layer in batch:
            layer.prepare(left_padding=padding)
        rows = [[0] * pad + p.to_prefill for pad, p in zip(padding, group, strict=True)]
        return batch, forward(model, rows, batch, bucket)[:, -1, :]
    # As mlx-lm's BatchGenerator: all but the last tokens right-padded, `finalize`d, then the
    # last tokens in one step. (Reading the last logits from the padded pass is wrong for some
    # families, e.g. plamo3's sliding windows.)
    heads = [length - 1 for length in lengths]
    if max(padding):
        for layer in batch:
            layer.prepare(lengths=heads, right_padding=padding)
    rows = [p.to_prefill[:-1] + [0] * pad for pad, p in zip(padding, group, strict=True)]
    model(mx.array(rows), cache=batch)
    if max(padding):
        for layer in batch:
            layer.finalize()
    last = mx.array([p.to_prefill[-1:] for p in group])
    return batch, model(last, cache=batch)[:, -1, :]


def choose_resumed_group(prefills: list[Prefill], budget: int) -> list[Prefill]:
    """The largest set (≥ 2) of shareable prefills resuming from the prefix cache with the same
    number of tokens left, within `budget` tokens. Equal suffixes can share a pass: the merged
    cache left-pads the shorter histories, and no padding falls between a history and its suffix.
    (The common case: a burst of requests whose prompts are all cached but the last token.)"""
    by_length: dict[int, list[Prefill]] = {}
    for prefill in prefills:
        if prefill.shareable and prefill.cached_tokens:
            by_length.setdefault(len(prefill.to_prefill), []).append(prefill)
    if not by_length:
        return []
    length, group = max(by_length.items(), key=lambda item: len(item[1]))
    group = group[: budget // length]
    return group if len(group) >= 2 else []


def prefill_resumed(
    model: Any, group: list[Prefill], bucket: int = 1
) -> tuple[list[Any], mx.array]:
    """Run equal-length prompt suffixes over their merged cached histories in one pass."""
    batch = caches.merge([p.cache for p in group])
    rows = [p.to_prefill for p in group]
    if len(rows[0]) > 1 and not caches.plain(batch):
        # As mlx-lm (and `Prefill.feed`): all but the last tokens, then the last ones. A sliding
        # window's output may depend on how the tokens are split (plamo3 masks one more key
        # than its window holds).
        forward(model, [row[:-1] for row in rows], batch, bucket)
        rows = [row[-1:] for row in rows]
    return batch, forward(model, rows, batch, bucket)[:, -1, :]
