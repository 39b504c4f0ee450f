"""Opt-in (MLXD_OPTIN=1): /v1/rerank on a chat model, Qwen2.5-Coder-0.5B-Instruct (imported from
its PyPI packages), judging each document yes/no (server/judging.py): with a clear query the
relevant document ranks first against unrelated ones. The margin is small (0.326 against 0.272
and 0.258, the same as a direct mlx-lm forward pass), and a near-miss document (JavaScript's
sort, 0.335) would outrank it: a general 0.5B chat model is a weak judge, which docs/api.md says.
Three short documents keep it to one engine batch."""

from __future__ import annotations

import httpx
import pytest

from engines.weights.embedded import QWEN_CODER

pytestmark = pytest.mark.optin

QUERY = "How do I reverse a list in Python?"
DOCUMENTS = [
    "The capital of France is Paris, a city on the Seine.",
    "In Python, my_list.reverse() reverses a list in place, and my_list[::-1] returns a "
    "reversed copy.",
    "Bananas are rich in potassium and are a popular fruit.",
]


def test_the_relevant_document_ranks_first(coder_url: str) -> None:
    body = {"model": QWEN_CODER.name, "query": QUERY, "documents": DOCUMENTS}
    response = httpx.post(f"{coder_url}/v1/rerank", json=body, timeout=900)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    scores = {result["index"]: result["relevance_score"] for result in results}
    assert results[0]["index"] == 1, results
    assert scores[1] - max(scores[0], scores[2]) > 0.02, scores
