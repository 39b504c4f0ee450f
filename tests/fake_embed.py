"""A scripted embedding engine: the /v1/embeddings and /v1/rerank contract without MLX.

It keeps the real engine's contract — `submit` returns a RequestStream fed from another thread,
one EmbeddingsDone (or an ErrorEvent) ends it, `active` counts requests in flight, cancellation
is seen before the work is done — with a toy model: a text's tokens are its words (ids from a
fixed vocabulary, unknown words → 1), the vector of an input is the normalised count of each
token id modulo `dimensions`, and a cross-encoder's logit is the number of query tokens found
in the document part of the pair.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from engines.bridge import RequestStream
from engines.errors import EngineFailed
from engines.types import (
    EmbeddingModelInfo,
    EmbeddingRequest,
    EmbeddingsDone,
    ErrorEvent,
)
from tests.fakes import FakeLifecycle

CLS, SEP = 2, 3
WORDS = ("a", "man", "is", "eating", "food", "bread", "horse", "the", "riding")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS]


class FakeEmbedEngine(FakeLifecycle):
    kind = "embedding"

    def __init__(
        self,
        name: str = "fake-embed",
        task: str = "embed",
        dimensions: int = 8,
        max_tokens: int = 16,
        matryoshka: bool = False,
        delay_s: float = 0.0,
        fail: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.task = task
        self.dimensions = dimensions
        self.max_tokens = max_tokens
        self.matryoshka = matryoshka
        self.delay_s = delay_s
        self.fail = fail
        self.info: EmbeddingModelInfo | None = None
        self.requests: list[EmbeddingRequest] = []
        self.cancelled = 0

    def loaded_info(self) -> EmbeddingModelInfo:
        return EmbeddingModelInfo(
            name=self.name,
            path="/fake",
            created=0,
            task="score" if self.task == "score" else "embed",
            dimensions=1 if self.task == "score" else self.dimensions,
            max_tokens=self.max_tokens,
            vocab_size=len(VOCAB),
            special_prefix=(CLS,),
            special_suffix=(SEP,),
            pair_specials=3,
            normalized=True,
            matryoshka=self.matryoshka,
            pooling="cls" if self.task == "score" else "mean",
        )

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [[_token_id(word) for word in text.lower().split()] for text in texts]

    def tokenize_pairs(
        self, query: str, documents: list[str], max_tokens: int
    ) -> list[tuple[list[int], list[int]]]:
        [query_ids] = self.tokenize([query])
        room = max_tokens - len(query_ids) - 3
        pairs = []
        for document_ids in self.tokenize(documents):
            cut = document_ids[:room]
            ids = [CLS, *query_ids, SEP, *cut, SEP]
            pairs.append((ids, [0] * (len(query_ids) + 2) + [1] * (len(cut) + 1)))
        return pairs

    def submit(self, request: EmbeddingRequest) -> RequestStream:
        self.requests.append(request)
        with self._lock:
            self._active += 1
        stream = RequestStream(request.request_id)
        threading.Thread(target=self._run, args=(request, stream), daemon=True).start()
        return stream

    def _run(self, request: EmbeddingRequest, stream: RequestStream) -> None:
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline and not stream.cancelled:
            time.sleep(0.005)
        try:
            if stream.cancelled:
                self.cancelled += 1
            elif self.fail:
                stream.push(ErrorEvent(EngineFailed("engine error: scripted failure")))
            else:
                vectors = np.stack([self._vector(request, i) for i in range(len(request.inputs))])
                tokens = sum(len(row) for row in request.inputs)
                stream.push(EmbeddingsDone(vectors.astype(np.float32), tokens))
        finally:
            with self._lock:
                self._active -= 1

    def _vector(self, request: EmbeddingRequest, index: int) -> np.ndarray:
        ids = request.inputs[index]
        if self.task == "score":
            assert request.token_types is not None
            types = request.token_types[index]
            query = {t for t, kind in zip(ids, types, strict=True) if kind == 0} - {CLS, SEP}
            document = [t for t, kind in zip(ids, types, strict=True) if kind == 1]
            return np.array([sum(t in query for t in document) - 0.5])
        counts = np.zeros(self.dimensions)
        for token in ids:
            counts[token % self.dimensions] += 1
        return counts / np.linalg.norm(counts)


def _token_id(word: str) -> int:
    return VOCAB.index(word) if word in VOCAB else 1
