"""all-MiniLM-L6-v2 (real weights, `mlxd import --embedded`) through the official SDK in strict
mode on a real socket: sentence-transformers' numbers, the default base64 path, ranking, wrong
kinds, concurrency, and a models file whose entry leaves `kind` out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cohere
import httpx
import numpy as np
import pytest
from openai import BadRequestError

from engines.weights.packaged_embeddings import ALL_MINILM_L6_V2
from engines.weights.store import ModelStore
from server.app import create_app
from server.settings import Settings
from tests.helpers import LiveServer, sdk_client
from tests.servers import serve

MODEL = ALL_MINILM_L6_V2.name
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
]
# sentence-transformers 6.3.0 (torch 2.14.1, CPU) on the same checkpoint: SentenceTransformer(
# dir).encode(SENTENCES) — the first components of sentence 0, the last of sentence 3.
REFERENCE_HEAD = [0.03324161, 0.00440603, -0.00627697, 0.04837866, -0.13870230, -0.03361739]
REFERENCE_TAIL = [-0.04984135, 0.00743563, 0.06817716, -0.02425221]


@pytest.fixture(scope="module")
def embedding_live(live: LiveServer) -> LiveServer:
    if not ModelStore(Settings().home).has(MODEL):
        pytest.fail(f"{MODEL} is not in the store; run `make install` (mlxd import --embedded)")
    return live


def test_matches_sentence_transformers(embedding_live: LiveServer) -> None:
    client = embedding_live.client()
    result = client.embeddings.create(model=MODEL, input=SENTENCES, encoding_format="float")
    vectors = np.array([item.embedding for item in result.data])
    assert vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert round(float(vectors[0] @ vectors[1]), 3) == 0.755
    assert -0.15 < float(vectors[0] @ vectors[2]) < 0.1  # unrelated
    np.testing.assert_allclose(vectors[0][:6], REFERENCE_HEAD, atol=1e-5)
    np.testing.assert_allclose(vectors[3][-4:], REFERENCE_TAIL, atol=1e-5)
    assert result.usage.prompt_tokens == 8 + 11 + 9 + 9  # [CLS] … [SEP] each


def test_default_base64_decodes_to_the_same_vectors(embedding_live: LiveServer) -> None:
    # The SDK's default asks for base64; its strict mode validates before decoding, so this
    # path is checked with validation off (what `OpenAI()` does by default).
    plain = embedding_live.client(_strict_response_validation=False)
    decoded = plain.embeddings.create(model=MODEL, input=SENTENCES[0]).data[0].embedding
    strict = embedding_live.client()
    floats = strict.embeddings.create(model=MODEL, input=SENTENCES[0], encoding_format="float")
    np.testing.assert_array_equal(decoded, floats.data[0].embedding)


def test_refusals(embedding_live: LiveServer) -> None:
    client = embedding_live.client()
    with pytest.raises(BadRequestError, match="not Matryoshka-trained") as caught:
        client.embeddings.create(model=MODEL, input="x", dimensions=128, encoding_format="float")
    assert caught.value.param == "dimensions"  # type: ignore[attr-defined]
    with pytest.raises(BadRequestError, match=r"input\[1\] is 302 tokens long"):
        client.embeddings.create(model=MODEL, input=["ok", "word " * 300], encoding_format="float")
    with pytest.raises(BadRequestError, match="is a chat model, not an embedding model"):
        client.embeddings.create(model="smollm2-135m-instruct", input="x", encoding_format="float")
    with pytest.raises(BadRequestError, match=f"'{MODEL}' is an embedding model, not a chat"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    cut = client.embeddings.create(
        model=MODEL, input="word " * 300, encoding_format="float", extra_body={"truncate": True}
    )
    assert cut.usage.prompt_tokens == 256


def test_rerank_puts_the_relevant_document_first(embedding_live: LiveServer) -> None:
    body = {
        "model": MODEL,
        "query": "What is the man eating?",
        "documents": [SENTENCES[3], SENTENCES[2], SENTENCES[1]],
        "return_documents": True,
    }
    response = httpx.post(f"{embedding_live.url}/v1/rerank", json=body, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["index"] == 2
    assert results[0]["document"] == {"text": SENTENCES[1]}
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_cohere_clients_embed_what_v1_embeddings_does(embedding_live: LiveServer) -> None:
    """Cohere's clients (cohere 7.3.1) on /v2/embed and /v1/embed (404s before): MiniLM's
    vectors equal /v1/embeddings' for the same texts, their signs packed 8 to a byte (384
    dimensions, 48 bytes); an over-long text is cut as `truncate: true` cuts it (Cohere's
    default END), or with NONE refused in Cohere's error body."""
    openai = embedding_live.client()
    result = openai.embeddings.create(model=MODEL, input=SENTENCES, encoding_format="float")
    floats = np.array([item.embedding for item in result.data])
    long = "word " * 300
    with httpx.Client(timeout=120) as http:
        v2 = cohere.ClientV2(api_key="unused", base_url=embedding_live.url, httpx_client=http)
        embedded = v2.embed(
            model=MODEL,
            texts=SENTENCES,
            input_type="search_document",
            embedding_types=["float", "ubinary"],
        )
        np.testing.assert_array_equal(embedded.embeddings.float_, floats)
        ubinary = np.array(embedded.embeddings.ubinary, np.uint8)
        assert ubinary.shape == (4, 48)
        np.testing.assert_array_equal(np.unpackbits(ubinary, axis=1), floats > 0)
        assert embedded.meta and embedded.meta.billed_units
        assert embedded.meta.billed_units.input_tokens == result.usage.prompt_tokens
        v1 = cohere.Client(api_key="unused", base_url=embedding_live.url, httpx_client=http)
        np.testing.assert_array_equal(v1.embed(texts=SENTENCES, model=MODEL).embeddings, floats)
        cut = v2.embed(model=MODEL, texts=[long], input_type="search_query")
        same = openai.embeddings.create(
            model=MODEL, input=long, encoding_format="float", extra_body={"truncate": True}
        )
        assert cut.embeddings.float_ == [same.data[0].embedding]
        with pytest.raises(cohere.BadRequestError) as refused:
            v2.embed(model=MODEL, texts=["ok", long], input_type="search_query", truncate="NONE")
        assert set(refused.value.body) == {"message"}
        assert (
            "texts[1] is 302 tokens long; 'all-minilm-l6-v2' takes at most 256"
            in (refused.value.body["message"])
        )


async def test_concurrent_requests_batch_and_agree(embedding_live: LiveServer) -> None:
    many = [f"sentence number {i} about {SENTENCES[i % 4]}" for i in range(300)]
    async with httpx.AsyncClient(base_url=f"{embedding_live.url}/v1", timeout=120) as http:

        async def embed(inputs: list[str]) -> np.ndarray:
            body = {"model": MODEL, "input": inputs, "encoding_format": "float"}
            response = await http.post("/embeddings", json=body)
            assert response.status_code == 200, response.text
            return np.array([item["embedding"] for item in response.json()["data"]])

        large, single = await asyncio.gather(embed(many), embed([many[7]]))
    np.testing.assert_allclose(large[7], single[0], atol=1e-5)  # padding and batching: no effect


def test_models_file_entry_without_kind_serves_embeddings(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(
        f'[[models]]\nname = "minilm"\nsource = "{MODEL}"\n\n'
        '[[models]]\nname = "chat"\nsource = "smollm2-135m-instruct"\n'
    )
    app = create_app(Settings(config=config))
    kinds = {model.name: model.kind for model in app.state.pool.models()}
    assert kinds == {"minilm": "embedding", "chat": "chat"}
    with serve(app) as url:
        client = sdk_client(url)
        result = client.embeddings.create(model="minilm", input="hello", encoding_format="float")
        assert len(result.data[0].embedding) == 384
        with pytest.raises(BadRequestError, match="'chat' is a chat model"):
            client.embeddings.create(model="chat", input="hello", encoding_format="float")
