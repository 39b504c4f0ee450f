"""/v1/rerank on a chat model (yes/no judging, server/judging.py) through a real LLMEngine on a
tiny random llama: every document's relevance_score equals P(yes) / (P(yes) + P(no)) that a
direct mlx-lm forward pass computes on the same judging prompt and weights, for more documents
than are judged at once; long documents are cut to fit, an over-long query is a 400.

The tiny tokenizer spells "yes" and "no" byte by byte, so the answer tokens are "y", "Y" and
"n", "N" (the first token of each word in either case, as the route takes them); it spells the
judging prompt nearly byte by byte too (~300 tokens), so the model here has a 1,024-token
context (rotary positions: only the config changes)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import mlx.core as mx
import pytest
from mlx_lm.utils import load

from engines.llm.engine import LLMEngine
from engines.pool import EnginePool
from server import judging
from server.app import create_app
from server.settings import Settings

QUERY = "where is the cat"
DOCUMENTS = [f"document {i}: the {word} sat" for i, word in enumerate(["cat", "dog", "owl", "rat"])]
MANY = [f"{text} again {i}" for i in range(5) for text in DOCUMENTS][:18]  # > IN_FLIGHT


CONTEXT = 1024


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("judge") / "tiny"
    shutil.copytree(tiny_model_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    config["max_position_embeddings"] = CONTEXT
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture
async def http(model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    pool = EnginePool([LLMEngine("tiny", model_dir, prefill_chunk=64)])
    await pool.start()
    transport = httpx.ASGITransport(app=create_app(Settings(), pool))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client
    await pool.drain(timeout=5)


def reference_log_odds(directory: Path, query: str, documents: list[str]) -> list[float]:
    """mlx-lm's own forward pass: log (P(y) + P(Y)) - log (P(n) + P(N)) at the prompt's last
    position (the score is its sigmoid; compared as log-odds, which stay exact where the sigmoid
    saturates)."""
    model, tokenizer = load(str(directory))
    yes = [tokenizer.encode(letter)[0] for letter in "yY"]
    no = [tokenizer.encode(letter)[0] for letter in "nN"]
    scores = []
    for document in documents:
        user = (
            f"<Instruct>: {judging.DEFAULT_INSTRUCTION}\n<Query>: {query}\n"
            f"<Document>: {document}\n{judging.QUESTION}"
        )
        messages = [
            {"role": "system", "content": judging.JUDGE_SYSTEM},
            {"role": "user", "content": user},
        ]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        logits = model(mx.array([prompt]))[0, -1].astype(mx.float32)
        scores.append(
            float(mx.logsumexp(logits[mx.array(yes)]) - mx.logsumexp(logits[mx.array(no)]))
        )
    return scores


@pytest.mark.parametrize("documents", [DOCUMENTS, MANY], ids=["four", "eighteen"])
async def test_scores_are_the_models_yes_probability(
    http: httpx.AsyncClient, model_dir: Path, documents: list[str]
) -> None:
    body = {"model": "tiny", "query": QUERY, "documents": documents, "return_documents": True}
    response = await http.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = reference_log_odds(model_dir, QUERY, documents)
    assert len(results) == len(documents)
    for result in results:
        score = result["relevance_score"]
        assert math.log(score / (1 - score)) == pytest.approx(expected[result["index"]], abs=5e-3)
        assert result["document"]["text"] == documents[result["index"]]
    scores = [result["relevance_score"] for result in results]
    assert scores == sorted(scores, reverse=True)
    assert max(expected) - min(expected) > 0.05  # the documents are told apart at all
    assert response.json()["usage"]["prompt_tokens"] > 20 * len(documents)


async def test_long_documents_are_cut_and_long_queries_refused(http: httpx.AsyncClient) -> None:
    long_document = "the cat sat on the mat " * 100  # ~2,300 bytes: over the context
    body = {"model": "tiny", "query": QUERY, "documents": ["short", long_document], "top_n": 1}
    response = await http.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 1
    assert response.json()["usage"]["prompt_tokens"] < 2 * CONTEXT
    body = {"model": "tiny", "query": "where " * CONTEXT, "documents": ["short"]}
    response = await http.post("/v1/rerank", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "query"
