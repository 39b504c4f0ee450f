"""EmbedEngine: an embedding model (or a cross-encoder) on its own engine thread.

Concurrent requests share forward passes: each step takes the next inputs fairly across the
requests in flight (`batching.choose`) and runs them in length buckets; a request's vectors are
pushed, in input order, once its last input has run. Cross-encoders run the same way on
(query, document) pairs and return their classification logits.

Invariants:
- Every MLX call happens on the engine thread; tokenizing (`tokenize`, `tokenize_pairs`) uses
  only the Rust tokenizer and may run on any thread once the model has loaded.
- Inputs arrive checked (each within `info.max_tokens`, ids within the vocabulary).
- A cancelled request leaves at the next step; a failed step fails only the requests in flight.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.bridge import RequestStream
from engines.embed.batching import Pending, by_bucket, choose
from engines.embed.checkpoint import Checkpoint, read_checkpoint
from engines.types import (
    EmbeddingLimits,
    EmbeddingModelInfo,
    EmbeddingRequest,
    EmbeddingsDone,
    EngineStats,
    ErrorEvent,
)
from engines.worker import EngineThread


@dataclass
class _Job:
    request: EmbeddingRequest
    stream: RequestStream
    pending: Pending
    vectors: np.ndarray | None = None  # filled row by row as inputs run
    remaining: int = 0
    tokens: int = field(default=0)


class EmbedEngine(EngineThread):
    kind = "embedding"

    def __init__(self, name: str, path: Path, limits: EmbeddingLimits | None = None) -> None:
        super().__init__(name)
        self.path = path
        self.limits = limits or EmbeddingLimits()
        self.info: EmbeddingModelInfo | None = None
        self.largest_batch = 0
        self.inputs_embedded = 0
        self._jobs: list[_Job] = []
        self._tokenizer: Any = None
        self._checkpoint: Checkpoint | None = None
        self._model: Any = None
        self._pad_id = 0

    # -- any thread ---------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return self.accepted

    def stats(self) -> EngineStats:
        return EngineStats(
            active=self.accepted,
            queued=len(self._jobs),
            largest_batch=self.largest_batch,
            tokens_generated=0,
            stalled=self.stalled(self.accepted > 0, self.limits.watchdog_s),
            failures=self.failures,
            weights_bytes=self.weights_bytes,
        )

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, without special tokens."""
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [list(encoding.ids) for encoding in encodings]

    def tokenize_pairs(
        self, query: str, documents: list[str], max_tokens: int
    ) -> list[tuple[list[int], list[int]]]:
        """(ids, segment ids) of each (query, document) pair with special tokens, the document
        cut so that the pair fits `max_tokens` (the query is never cut: the edge checks that it
        leaves room for a document token, `EmbeddingModelInfo.pair_specials`)."""
        query_encoding = self._tokenizer.encode(query, add_special_tokens=False)
        specials = self._tokenizer.post_process(query_encoding, query_encoding).ids
        room = max(0, max_tokens - (len(specials) - len(query_encoding.ids)))
        pairs = []
        for document in self._tokenizer.encode_batch(documents, add_special_tokens=False):
            document.truncate(room)
            merged = self._tokenizer.post_process(query_encoding, document)
            pairs.append((list(merged.ids), list(merged.type_ids)))
        return pairs

    def submit(self, request: EmbeddingRequest) -> RequestStream:
        """Queue the inputs; one EmbeddingsDone (or an ErrorEvent) arrives on the stream."""
        self.accept_request(self.limits.max_waiting, "requests")
        stream = RequestStream(request.request_id)
        lengths = [len(row) for row in request.inputs]
        self.post(_Job(request, stream, Pending(lengths), remaining=len(lengths),
                       tokens=sum(lengths)))  # fmt: skip
        return stream

    # -- engine thread -----------------------------------------------------------------------

    def load(self) -> None:
        import mlx.core as mx
        from tokenizers import Tokenizer

        checkpoint = read_checkpoint(self.path)
        config = json.loads((self.path / "config.json").read_text())
        if checkpoint.decoder:
            from engines.embed.decoder import load_decoder

            self._model = load_decoder(self.path, config)
        else:
            from engines.embed.encoder import load_encoder

            self._model = load_encoder(self.path, config, checkpoint.num_labels)
        self.measure_weights(self._model)
        tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        tokenizer.no_padding()  # we pad by bucket; the edge checks lengths
        tokenizer.no_truncation()
        self._tokenizer, self._checkpoint = tokenizer, checkpoint
        self._pad_id = int(config.get("pad_token_id") or 0)
        with_specials = tokenizer.encode("a").ids
        bare = tokenizer.encode("a", add_special_tokens=False).ids
        start = next(i for i in range(len(with_specials)) if with_specials[i:][: len(bare)] == bare)
        empty = tokenizer.encode("", add_special_tokens=False)
        self.info = EmbeddingModelInfo(
            name=self.name,
            path=str(self.path),
            created=int(time.time()),
            task=checkpoint.task,
            dimensions=checkpoint.num_labels or checkpoint.dimensions,
            max_tokens=checkpoint.max_tokens,
            vocab_size=int(config["vocab_size"]),
            special_prefix=tuple(with_specials[:start]),
            special_suffix=tuple(with_specials[start + len(bare) :]),
            pair_specials=len(tokenizer.post_process(empty, empty).ids),
            normalized=checkpoint.normalize,
            matryoshka=checkpoint.matryoshka,
            pooling=checkpoint.pooling,
        )
        self._forward([[*self.info.special_prefix, *bare, *self.info.special_suffix]], None, 16)
        mx.clear_cache()

    def handle(self, message: Any) -> None:
        self._jobs.append(message)

    def has_work(self) -> bool:
        return bool(self._jobs)

    def step(self) -> None:
        for job in [j for j in self._jobs if j.stream.cancelled]:
            self._finish(job)
        if not self._jobs:
            return
        pending = [job.pending for job in self._jobs]
        chosen = choose(pending, self.limits.max_batch, self.limits.max_batch_tokens)
        self.largest_batch = max(self.largest_batch, len(chosen))
        for width, group in by_bucket(chosen, pending):
            rows = [self._jobs[p].request.inputs[i] for p, i in group]
            types = [self._types(self._jobs[p].request, i) for p, i in group]
            vectors = self._forward(rows, types, width)
            for (position, index), vector in zip(group, vectors, strict=True):
                job = self._jobs[position]
                if job.vectors is None:
                    job.vectors = np.empty((len(job.request.inputs), vector.size), np.float32)
                job.vectors[index] = vector
                job.remaining -= 1
        self.inputs_embedded += len(chosen)
        for job in [j for j in self._jobs if j.remaining == 0]:
            assert job.vectors is not None
            self._finish(job)  # first: a reader woken by the push sees the engine idle
            job.stream.push(EmbeddingsDone(job.vectors, job.tokens))

    def fail_all(self, error: Exception) -> None:
        for job in list(self._jobs):
            self._finish(job)
            job.stream.push(ErrorEvent(error))

    def _finish(self, job: _Job) -> None:
        self._jobs.remove(job)
        self.finish_request()

    @staticmethod
    def _types(request: EmbeddingRequest, index: int) -> list[int] | None:
        return request.token_types[index] if request.token_types is not None else None

    def _forward(
        self, rows: list[list[int]], types: list[list[int] | None] | None, width: int
    ) -> np.ndarray:
        """Pooled (and, if the checkpoint says so, normalised) vectors — or a cross-encoder's
        logits — of `rows`, padded to `width`: (rows, dimensions) float32 on the host."""
        import mlx.core as mx

        from engines.embed.decoder import last_token_states

        checkpoint = self._checkpoint
        assert checkpoint is not None
        if checkpoint.decoder:
            pooled = last_token_states(self._model, rows, width, self._pad_id)
        else:
            ids = mx.array([row + [self._pad_id] * (width - len(row)) for row in rows])
            given = types or [None] * len(rows)
            segment = [t or [0] * len(r) for r, t in zip(rows, given, strict=True)]
            type_ids = mx.array([t + [0] * (width - len(t)) for t in segment])
            mask = mx.array([[1] * len(row) + [0] * (width - len(row)) for row in rows])
            hidden = self._model(ids, type_ids, mask)
            if checkpoint.task == "score":
                return np.array(self._model.score(hidden, mask).astype(mx.float32))
            pooled = _pool(hidden, mask, checkpoint.pooling)
        if checkpoint.normalize:
            pooled = pooled / mx.maximum(mx.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return np.array(pooled.astype(mx.float32))


def _pool(hidden: Any, mask: Any, pooling: str) -> Any:
    """sentence-transformers' pooling of right-padded hidden states over real tokens."""
    import mlx.core as mx

    weights = mask[..., None].astype(hidden.dtype)
    if pooling == "mean":
        return (hidden * weights).sum(axis=1) / mx.maximum(weights.sum(axis=1), 1e-9)
    if pooling == "max":
        return mx.where(weights > 0, hidden, -1e9).max(axis=1)
    if pooling == "last":
        last = mask.sum(axis=1) - 1
        return mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return hidden[:, 0]
