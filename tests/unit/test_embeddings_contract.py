"""The /v1/embeddings and /v1/rerank contract on a scripted embedding engine: the strict SDK's
`embeddings.create` (base64 by default, float on request), every input shape, `dimensions`,
truncation, the rerank shape, and every refusal as an OpenAI-shaped 4xx naming its field before
any engine work; plus the models file's kind detection and the engine's batch choice."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import numpy as np
import pytest
import voyageai
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from engines.embed.batching import Pending, bucket, by_bucket, choose
from engines.kinds import detect_kind
from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fake_embed import CLS, SEP, VOCAB, WORDS, FakeEmbedEngine
from tests.fake_tts import FakeTTSEngine
from tests.fakes import FakeEngine
from tests.servers import serve, wait_until


@pytest.fixture
def embedder() -> FakeEmbedEngine:
    return FakeEmbedEngine()


@pytest.fixture
def chat() -> FakeEngine:
    return FakeEngine(context_length=1024)  # one token per character: room for a judging prompt


@pytest.fixture
async def http(embedder: FakeEmbedEngine, chat: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    engines = [chat, embedder, FakeEmbedEngine("fake-matryoshka", matryoshka=True),
               FakeEmbedEngine("fake-reranker", task="score"), FakeTTSEngine()]  # fmt: skip
    pool = EnginePool(engines)
    app = create_app(Settings(max_body_bytes=64 * 1024), pool)
    await pool.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client
    await pool.drain(timeout=1)


@pytest.fixture
def sdk(http: httpx.AsyncClient) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url="http://127.0.0.1/v1",
        api_key="unused",
        http_client=http,
        _strict_response_validation=True,
        max_retries=0,
    )


def ids(text: str) -> list[int]:
    return [CLS, *(VOCAB.index(word) for word in text.split()), SEP]


@pytest.mark.parametrize("strict", [True, False], ids=["strict-float", "default-base64"])
async def test_sdk_embeddings_create(
    http: httpx.AsyncClient, embedder: FakeEmbedEngine, strict: bool
) -> None:
    """The SDK asks for base64 unless told otherwise and decodes it after parsing; its strict
    mode validates the raw body first, against float lists, so strict clients ask for floats
    (as they must from any server)."""
    sdk = AsyncOpenAI(
        base_url="http://127.0.0.1/v1",
        api_key="unused",
        http_client=http,
        _strict_response_validation=strict,
        max_retries=0,
    )
    texts = ["a man", "the horse"]
    if strict:
        result = await sdk.embeddings.create(
            model="fake-embed", input=texts, encoding_format="float"
        )
    else:
        result = await sdk.embeddings.create(model="fake-embed", input=texts)
    assert [item.index for item in result.data] == [0, 1]
    assert embedder.requests[-1].inputs == [ids("a man"), ids("the horse")]
    for item, text in zip(result.data, ["a man", "the horse"], strict=True):
        counts = np.bincount(np.array(ids(text)) % 8, minlength=8)
        np.testing.assert_allclose(item.embedding, counts / np.linalg.norm(counts), rtol=1e-6)
    assert result.usage.prompt_tokens == result.usage.total_tokens == 8
    assert result.model == "fake-embed"


async def test_float_format_and_every_input_shape(http: httpx.AsyncClient) -> None:
    token_ids = [VOCAB.index("man"), VOCAB.index("food")]
    cases = [
        ("a man", [ids("a man")]),
        (["a man", "food"], [ids("a man"), ids("food")]),
        (token_ids, [[CLS, *token_ids, SEP]]),
        ([token_ids, [4]], [[CLS, *token_ids, SEP], [CLS, 4, SEP]]),
    ]
    for given, expected in cases:
        body = {"model": "fake-embed", "input": given, "encoding_format": "float"}
        response = await http.post("/v1/embeddings", json=body)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert len(data) == len(expected)
        assert all(isinstance(value, float) for value in data[0]["embedding"])
        assert response.json()["usage"]["prompt_tokens"] == sum(map(len, expected))
    # a text and its own token ids embed alike
    text = await http.post("/v1/embeddings", json={"model": "fake-embed", "input": "man food"})
    tokens = await http.post("/v1/embeddings", json={"model": "fake-embed", "input": token_ids})
    assert text.json()["data"] == tokens.json()["data"]


async def test_unknown_fields_reported_user_ignored(http: httpx.AsyncClient) -> None:
    body = {"model": "fake-embed", "input": "a", "user": "u1", "extra_thing": 1}
    response = await http.post("/v1/embeddings", json=body)
    assert response.status_code == 200
    assert response.headers["x-mlxd-ignored-fields"] == "user,extra_thing"
    assert response.headers["x-request-id"].startswith("embd-")


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"input": ""}, "input", "input[0] is empty"),
        ({"input": []}, "input", "must not be empty"),
        ({"input": ["a", ""]}, "input", "input[1] is empty"),
        ({"input": [[1], []]}, "input", "input[1] is empty"),
        ({"input": [-1]}, "input", "negative"),
        ({"input": ["a", 1]}, "input", None),
        ({"input": ["a"] * 2049}, "input", "at most 2048"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", None),
        ({"input": "a", "dimensions": 0}, "dimensions", None),
        ({"input": "a", "dimensions": 4}, "dimensions", "not Matryoshka-trained"),
        ({"input": "a", "dimensions": 9}, "dimensions", "makes 8 dimensions"),
        ({"input": [[4, 99]]}, "input", "input[0] holds token id 99"),
        ({"input": [[4, 99]]}, "input", "tiktoken ids (LangChain's OpenAIEmbeddings"),
        ({"input": ["a", "a " * 15]}, "input", "input[1] is 17 tokens long"),
        ({"model": "fake", "input": "a"}, "model", "'fake' is a chat model, not an embedding"),
        ({"model": "fake-reranker", "input": "a"}, "model", "is a reranker"),
    ],
)
async def test_refusals_name_the_field(
    http: httpx.AsyncClient,
    embedder: FakeEmbedEngine,
    body: dict[str, object],
    param: str,
    fragment: str | None,
) -> None:
    response = await http.post("/v1/embeddings", json={"model": "fake-embed", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    if fragment:
        assert fragment in error["message"]
    assert embedder.requests == []


async def test_unknown_model_is_404(sdk: AsyncOpenAI) -> None:
    with pytest.raises(NotFoundError):
        await sdk.embeddings.create(model="nope", input="a")


async def test_sdk_bad_request_names_param(sdk: AsyncOpenAI) -> None:
    with pytest.raises(BadRequestError) as caught:
        await sdk.embeddings.create(model="fake-embed", input="a", dimensions=3)
    assert caught.value.param == "dimensions"  # type: ignore[attr-defined]


async def test_truncate_cuts_to_the_model_length(
    http: httpx.AsyncClient, embedder: FakeEmbedEngine
) -> None:
    body = {"model": "fake-embed", "input": "a " * 20, "truncate": True}
    response = await http.post("/v1/embeddings", json=body)
    assert response.status_code == 200
    [row] = embedder.requests[-1].inputs
    assert len(row) == 16 and row[0] == CLS and row[-1] == SEP


async def test_matryoshka_dimensions_truncate_and_renormalise(http: httpx.AsyncClient) -> None:
    body = {"model": "fake-matryoshka", "input": "a man eating", "encoding_format": "float"}
    full = (await http.post("/v1/embeddings", json=body)).json()["data"][0]["embedding"]
    short = (await http.post("/v1/embeddings", json={**body, "dimensions": 5})).json()
    vector = np.array(short["data"][0]["embedding"])
    assert vector.shape == (5,)
    np.testing.assert_allclose(vector, np.array(full[:5]) / np.linalg.norm(full[:5]), rtol=1e-6)


async def test_engine_failure_is_500_and_client_leaving_cancels() -> None:
    failing = FakeEmbedEngine(fail=True)
    slow = FakeEmbedEngine("slow", delay_s=5)
    pool = EnginePool([failing, slow])
    app = create_app(Settings(), pool)
    await pool.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.post("/v1/embeddings", json={"model": "fake-embed", "input": "a"})
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "engine_failed"
        request = asyncio.ensure_future(
            client.post("/v1/embeddings", json={"model": "slow", "input": "a"}, timeout=0.3)
        )
        await wait_until(lambda: slow.active == 1, timeout=2)
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    await wait_until(lambda: slow.cancelled == 1, timeout=2)
    await pool.drain(timeout=1)


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"output_dtype": "int8"}, "output_dtype", "float"),
        ({"output_dtype": "ubinary"}, "output_dtype", "float"),
        ({"output_dimension": 4}, "output_dimension", "not Matryoshka-trained"),
    ],
)
async def test_voyage_fields_that_would_change_the_vectors_are_not_ignored(
    http: httpx.AsyncClient,
    embedder: FakeEmbedEngine,
    fields: dict[str, object],
    param: str,
    fragment: str,
) -> None:
    """Voyage's client decodes base64 as the `output_dtype` it asked for: float32 bytes read as
    int8 were 4x as many numbers, none of them the embedding. Its `output_dimension` is
    `dimensions`."""
    body = {"model": "fake-embed", "input": "a", "encoding_format": "base64", **fields}
    response = await http.post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert embedder.requests == []


async def test_voyage_client_embeds(embedder: FakeEmbedEngine) -> None:
    """voyageai's `embed` (base64 by default, `truncation` on by default, `output_dimension`
    on a Matryoshka model) on a real socket."""
    pool = EnginePool([embedder, FakeEmbedEngine("fake-matryoshka", matryoshka=True)])
    with serve(create_app(Settings(), pool)) as url:
        client = voyageai.AsyncClient(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        result = await client.embed(["a man", "a " * 20], model="fake-embed", input_type="query")
        counts = np.bincount(np.array(ids("a man")) % 8, minlength=8)
        np.testing.assert_allclose(result.embeddings[0], counts / np.linalg.norm(counts), 1e-6)
        assert [len(row) for row in embedder.requests[-1].inputs] == [4, 16]  # cut, as Voyage
        short = await client.embed(["a man"], model="fake-matryoshka", output_dimension=5)
        assert len(short.embeddings[0]) == 5
        # OpenAI's error shape, which the client shows whole (it looks for Voyage's `detail`)
        with pytest.raises(voyageai.error.APIError, match="output_dtype"):
            await client.embed(["a man"], model="fake-embed", output_dtype="int8")


# -- Cohere's embed API ----------------------------------------------------------------------


def cohere_v2(http: httpx.AsyncClient) -> cohere.AsyncClientV2:
    return cohere.AsyncClientV2(api_key="unused", base_url="http://127.0.0.1", httpx_client=http)


# The v1 client's merge of batched by-type answers (cohere/utils.py) uses pydantic APIs that
# pydantic deprecates (`parse_obj`, `model_fields` on an instance): the client's warnings.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211")
async def test_cohere_sdks_embed(http: httpx.AsyncClient) -> None:
    """Cohere's v2 client posts to /v2/embed, its v1 client to /v1/embed (both were 404s): the
    vectors are /v1/embeddings' for the same texts, in each embedding type served."""
    texts = ["a man", "the horse riding", "man"]
    body = {"model": "fake-embed", "input": texts, "encoding_format": "float"}
    answer = (await http.post("/v1/embeddings", json=body)).json()
    openai = [item["embedding"] for item in answer["data"]]
    kinds = ["float", "ubinary", "binary", "base64"]
    result = await cohere_v2(http).embed(
        model="fake-embed", texts=texts, input_type="search_document", embedding_types=kinds
    )
    assert result.id and result.texts == texts
    assert result.embeddings.float_ == openai
    signs = np.packbits(np.array(openai) > 0, axis=1)  # 8 dimensions: one byte a vector
    assert result.embeddings.ubinary == signs.tolist()
    assert result.embeddings.binary == (signs.astype(int) - 128).tolist()
    assert result.embeddings.base64 is not None
    decoded = [
        np.frombuffer(base64.b64decode(row), "<f4").tolist() for row in result.embeddings.base64
    ]
    assert decoded == openai
    assert result.meta and result.meta.billed_units and result.meta.api_version
    billed = (result.meta.billed_units.input_tokens, result.meta.api_version.version)
    assert billed == (answer["usage"]["prompt_tokens"], "2")
    v1 = cohere.AsyncClient(api_key="unused", base_url="http://127.0.0.1", httpx_client=http)
    floats = await v1.embed(texts=texts, model="fake-embed")
    assert floats.response_type == "embeddings_floats" and floats.embeddings == openai
    by_type = await v1.embed(texts=texts, model="fake-embed", embedding_types=["float"])
    assert by_type.response_type == "embeddings_by_type"
    assert by_type.embeddings.float_ == openai  # type: ignore[union-attr]


async def test_cohere_embed_truncate(http: httpx.AsyncClient, embedder: FakeEmbedEngine) -> None:
    """`truncate`: END (Cohere's default) keeps a long text's start, START its end, NONE
    refuses it with Cohere's error body, naming the text and its length."""
    long = " ".join(WORDS * 3)  # 27 tokens; the fake takes 16 with [CLS] and [SEP]
    tokens = ids(long)[1:-1]
    client = cohere_v2(http)
    for truncate, kept in (("END", tokens[:14]), ("START", tokens[-14:])):
        await client.embed(model="fake-embed", texts=["a", long], input_type="search_query",
                           truncate=truncate)  # fmt: skip
        assert embedder.requests[-1].inputs[1] == [CLS, *kept, SEP]
    await client.embed(model="fake-embed", texts=[long], input_type="search_query")
    assert embedder.requests[-1].inputs[0] == [CLS, *tokens[:14], SEP]
    with pytest.raises(cohere.BadRequestError) as refused:
        await client.embed(
            model="fake-embed", texts=["a", long], input_type="search_query", truncate="NONE"
        )
    assert refused.value.body == {
        "message": "texts[1] is 29 tokens long; 'fake-embed' takes at most 16 "
        '(send "truncate": "END" (or "START") to cut texts to that length)'
    }


@pytest.mark.parametrize("path", ["/v2/embed", "/v1/embed"])
@pytest.mark.parametrize(
    ("fields", "status", "fragment"),
    [
        ({"embedding_types": ["int8"]}, 400, "served: float, binary, ubinary, base64"),
        ({"embedding_types": ["uint8", "float"]}, 400, "'uint8' embeddings are not served"),
        ({"embedding_types": []}, 400, "embedding_types"),
        ({"texts": []}, 400, "texts"),
        ({"texts": ["a", ""]}, 400, "texts[1] is empty"),
        ({"texts": ["a"] * 97}, 400, "texts"),
        ({"truncate": "LEFT"}, 400, "truncate"),
        ({"input_type": "query"}, 400, "input_type"),
        ({"images": ["data:image/png;base64,AA=="]}, 400, "only texts are embedded"),
        ({"max_tokens": 8}, 400, "max_tokens"),
        ({"output_dimension": 4}, 400, "not Matryoshka-trained"),
        ({"model": "fake-reranker"}, 400, "is a reranker"),
        ({"model": "fake"}, 400, "is a chat model"),
        ({"model": "nope"}, 404, "nope"),
    ],
)
async def test_cohere_embed_refusals_are_cohere_shaped(
    http: httpx.AsyncClient,
    embedder: FakeEmbedEngine,
    path: str,
    fields: dict[str, object],
    status: int,
    fragment: str,
) -> None:
    """Cohere's error body, `{"message": ...}`, with a 4xx, before any engine work; int8 and
    uint8 (Cohere's calibrated quantisation) are refused, not faked."""
    body = {"model": "fake-embed", "texts": ["a man"], "input_type": "search_query", **fields}
    response = await http.post(path, json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"message"} and fragment in response.json()["message"]
    assert embedder.requests == []


@pytest.mark.parametrize("path", ["/v2/embed", "/v1/embed"])
async def test_cohere_inputs_in_place_of_texts_are_refused_as_such(
    http: httpx.AsyncClient, embedder: FakeEmbedEngine, path: str
) -> None:
    """The v2 client's `inputs` (content lists, its multimodal form) sent with no `texts`: the
    400 says inputs are not served; it said `texts` was required, as if the body lacked it."""
    inputs = [{"content": [{"type": "text", "text": "a man"}]}]
    response = await http.post(path, json={"model": "fake-embed", "inputs": inputs})
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"message"} and "'inputs'" in response.json()["message"]
    assert embedder.requests == []


async def test_cohere_embed_output_dimension(http: httpx.AsyncClient) -> None:
    """`output_dimension` shortens a Matryoshka model's vectors, as `dimensions` does."""
    body = {"model": "fake-matryoshka", "input": "a man", "encoding_format": "float",
            "dimensions": 5}  # fmt: skip
    openai = (await http.post("/v1/embeddings", json=body)).json()["data"][0]["embedding"]
    result = await cohere_v2(http).embed(
        model="fake-matryoshka", texts=["a man"], input_type="clustering", output_dimension=5
    )
    assert result.embeddings.float_ == [openai]


# -- rerank ----------------------------------------------------------------------------------


DOCUMENTS = ["the horse", "a man eating food", {"text": "a man riding"}]


async def test_rerank_cross_encoder_sorted_with_documents(http: httpx.AsyncClient) -> None:
    body = {
        "model": "fake-reranker",
        "query": "man eating",
        "documents": DOCUMENTS,
        "return_documents": True,
    }
    response = await http.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [1, 2, 0]
    expected = [1 / (1 + np.exp(-x)) for x in (1.5, 0.5, -0.5)]
    np.testing.assert_allclose([r["relevance_score"] for r in results], expected, rtol=1e-6)
    assert results[1]["document"] == {"text": "a man riding"}
    assert response.json()["model"] == "fake-reranker"
    assert response.json()["id"].startswith("rerank-")


async def test_rerank_bi_encoder_cosine_top_n(http: httpx.AsyncClient) -> None:
    body = {"model": "fake-embed", "query": "a man eating", "documents": DOCUMENTS, "top_n": 2}
    response = await http.post("/v1/rerank", json=body)
    results = response.json()["results"]
    assert len(results) == 2 and "document" not in results[0]
    assert results[0]["index"] == 1
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert -1.0 <= results[1]["relevance_score"] <= 1.0


async def test_rerank_cuts_long_documents(
    http: httpx.AsyncClient, embedder: FakeEmbedEngine
) -> None:
    body = {"model": "fake-embed", "query": "man", "documents": ["a " * 40]}
    response = await http.post("/v1/rerank", json=body)
    assert response.status_code == 200
    assert [len(row) for row in embedder.requests[-1].inputs] == [3, 16]


async def test_cohere_sdks_rerank(http: httpx.AsyncClient) -> None:
    """Cohere's v2 client posts to /v2/rerank, its v1 client to /v1/rerank; vLLM's /rerank is
    the same route."""
    v2 = cohere.AsyncClientV2(api_key="unused", base_url="http://127.0.0.1", httpx_client=http)
    ranked = await v2.rerank(
        model="fake-embed", query="a man eating", documents=["the horse", "a man eating food"]
    )
    assert [r.index for r in ranked.results] == [1, 0] and ranked.id
    v1 = cohere.AsyncClient(api_key="unused", base_url="http://127.0.0.1", httpx_client=http)
    first = await v1.rerank(
        model="fake-embed", query="man eating", documents=DOCUMENTS, top_n=1, return_documents=True
    )
    [result] = first.results
    assert result.index == 1 and result.document and result.document.text == "a man eating food"
    body = {"model": "fake-embed", "query": "man eating", "documents": DOCUMENTS}
    plain = await http.post("/rerank", json=body)
    assert plain.status_code == 200, plain.text
    expected = (await http.post("/v1/rerank", json=body)).json()["results"]
    assert plain.json()["results"] == expected


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize(
    ("fields", "status", "fragment"),
    [
        ({"query": ""}, 400, "'query'"),
        ({"documents": ["a"] * 1001}, 400, "'documents'"),
        ({"documents": []}, 400, "'documents'"),
        ({"documents": ["a", 3]}, 400, "'documents[1]'"),
        ({"query": ["a"]}, 400, "'query'"),
        ({"top_n": "two"}, 400, "'top_n'"),
        ({"query": "a " * 20, "model": "fake-reranker"}, 400, "query is 20 tokens long"),
        ({"model": "fake-kokoro"}, 400, "'fake-kokoro'"),
        ({"model": "nope"}, 404, "'nope'"),
    ],
)
async def test_cohere_sdk_rerank_refusals_are_cohere_shaped(
    http: httpx.AsyncClient,
    embedder: FakeEmbedEngine,
    version: int,
    fields: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    """Cohere's clients read Cohere's error body, `{"message": ...}`: /v2/rerank answers in it
    (as /v2/embed does), and so does /v1/rerank for a Cohere SDK's request (its `X-Fern-SDK-Name`),
    where Jina's, Voyage's and Open WebUI's bodies keep OpenAI's shape. The SDK's ApiError
    carries the status and that body, whose message names the field; no engine work is done."""
    args = {"model": "fake-embed", "query": "a man", "documents": ["the horse"], **fields}
    client = (
        cohere_v2(http)
        if version == 2
        else cohere.AsyncClient(api_key="unused", base_url="http://127.0.0.1", httpx_client=http)
    )
    with pytest.raises(cohere.core.ApiError) as refused:
        await client.rerank(**args)
    assert refused.value.status_code == status
    assert isinstance(refused.value.body, dict) and set(refused.value.body) == {"message"}
    assert fragment in refused.value.body["message"], refused.value.body
    assert embedder.requests == []


@pytest.mark.parametrize("model", ["fake-embed", "fake"], ids=["embedding", "chat-judge"])
async def test_a_cohere_clients_rerank_engine_failure_is_cohere_shaped(
    http: httpx.AsyncClient, embedder: FakeEmbedEngine, model: str
) -> None:
    """An engine failure after the request was accepted, which the route answers itself (not
    the handlers): Cohere's shape too. The chat fake cannot judge (its answer misses yes and
    no); the embedding fake fails as scripted."""
    embedder.fail = True
    with pytest.raises(cohere.InternalServerError) as failed:
        await cohere_v2(http).rerank(
            model=model, query="a man", documents=["the horse"],
            request_options={"max_retries": 0},
        )  # fmt: skip
    assert set(failed.value.body) == {"message"}, failed.value.body
    expected = "scripted failure" if model == "fake-embed" else "miss yes or no"
    assert expected in failed.value.body["message"]
    body = {"model": model, "query": "a man", "documents": ["the horse"]}
    openai = await http.post("/v1/rerank", json=body)
    assert openai.status_code == 500 and expected in openai.json()["error"]["message"]


async def test_a_cohere_clients_refused_key_is_cohere_shaped(embedder: FakeEmbedEngine) -> None:
    """Refusals before any route (here a wrong API key) take Cohere's shape for a Cohere SDK's
    request too, on the path it shares with other clients."""
    app = create_app(Settings(api_key="right"), EnginePool([embedder]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        v1 = cohere.AsyncClient(api_key="wrong", base_url="http://127.0.0.1", httpx_client=http)
        with pytest.raises(cohere.UnauthorizedError) as refused:
            await v1.rerank(model="fake-embed", query="a", documents=["b"])
        assert refused.value.body == {"message": "Incorrect or missing API key"}
        plain = await http.post("/v1/rerank", json={"model": "fake-embed"})
        assert plain.status_code == 401 and plain.json()["error"]["code"] == "invalid_api_key"


async def test_rerank_errors_keep_openais_shape_for_other_clients(http: httpx.AsyncClient) -> None:
    """Without a Cohere SDK's header, /v1/rerank and /rerank answer OpenAI's error shape (Jina,
    Open WebUI, vLLM's clients); /v2/rerank is Cohere's path, whoever posts there."""
    body = {"model": "fake-embed", "query": "", "documents": ["a"]}
    for path in ("/v1/rerank", "/rerank"):
        response = await http.post(path, json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == "query"
    response = await http.post("/v2/rerank", json=body)
    assert response.status_code == 400 and set(response.json()) == {"message"}
    assert "'query'" in response.json()["message"]


async def test_voyage_rerank_shape(http: httpx.AsyncClient) -> None:
    """A body in Voyage's words (`top_k`, `truncation`; its client always sends both) gets
    Voyage's response: `data`, each document a string, `usage.total_tokens`."""
    body = {"model": "fake-embed", "query": "man eating", "documents": DOCUMENTS, "top_k": 2,
            "truncation": True, "return_documents": True}  # fmt: skip
    response = await http.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"object", "data", "model", "usage"} and answer["object"] == "list"
    assert [r["index"] for r in answer["data"]] == [1, 0]
    assert answer["data"][1]["document"] == "the horse"
    assert answer["usage"]["total_tokens"] > 0
    assert "x-mlxd-ignored-fields" not in response.headers


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("fake-embed", "documents[1] is 22 tokens long; 'fake-embed' takes at most 16"),
        ("fake-reranker", "documents[1] is 20 tokens long, 24 with the query and separators"),
        ("fake", "documents[1] makes a judging prompt of"),
    ],
    ids=["bi-encoder", "cross-encoder", "chat-judge"],
)
async def test_voyage_truncation_false_refuses_a_long_document(
    http: httpx.AsyncClient,
    embedder: FakeEmbedEngine,
    chat: FakeEngine,
    model: str,
    message: str,
) -> None:
    """Voyage's API answers an error for a document too long for the model when `truncation`
    is false; it was cut as with true. Cut it still is with true (Voyage's default) or without
    the field (Cohere's and Jina's bodies have none)."""
    long = "a " * 20 if model != "fake" else "a" * 2000  # the chat fake reads characters
    body = {"model": model, "query": "man", "documents": ["the horse", long], "top_k": None}
    response = await http.post("/v1/rerank", json={**body, "truncation": False})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "documents" and error["code"] == "context_length_exceeded"
    assert message in error["message"] and '"truncation": true' in error["message"], error
    assert embedder.requests == [] and chat.requests == []
    for cut in ({"truncation": True}, {}):
        response = await http.post("/v1/rerank", json={**body, **cut})
        # the chat fake cannot judge (its answer misses yes and no: a 500 once it was asked)
        assert response.status_code == (500 if model == "fake" else 200), response.text


async def test_voyage_client_truncation_false(embedder: FakeEmbedEngine) -> None:
    """voyageai's `embed` and `rerank` with `truncation=False` on a real socket: a 400 whose
    message names the input and its length (the client shows OpenAI's error shape whole, as it
    looks for Voyage's `detail`)."""
    pool = EnginePool([embedder])
    with serve(create_app(Settings(), pool)) as url:
        client = voyageai.AsyncClient(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        refused = voyageai.error.APIError
        with pytest.raises(refused, match=r"documents\[1\] is 22 tokens long.*at most 16"):
            await client.rerank("man", ["the horse", "a " * 20], "fake-embed", truncation=False)
        with pytest.raises(refused, match=r"input\[1\] is 22 tokens long.*truncation.*: true"):
            await client.embed(["a man", "a " * 20], model="fake-embed", truncation=False)
        assert embedder.requests == []
        ranked = await client.rerank("man", ["the horse", "a " * 20], "fake-embed")
        assert len(ranked.results) == 2


async def test_voyage_client_reranks(embedder: FakeEmbedEngine) -> None:
    with serve(create_app(Settings(), EnginePool([embedder]))) as url:
        client = voyageai.AsyncClient(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        ranked = await client.rerank("man eating", ["the horse", "a man eating food"], "fake-embed")
        assert [r.index for r in ranked.results] == [1, 0]
        assert ranked.results[0].document == "a man eating food" and ranked.total_tokens > 0
        top = await client.rerank(
            "man eating", ["the horse", "a man eating"], "fake-embed", top_k=1
        )
        assert [r.index for r in top.results] == [1]


async def test_a_cross_encoder_query_leaves_room_for_the_document(
    http: httpx.AsyncClient, embedder: FakeEmbedEngine
) -> None:
    """A cross-encoder reads `[CLS] query [SEP] document [SEP]` in its 16 tokens: a query of 13
    fits alone (15) but left the documents no room, so every one was scored on the query
    alone (and one of 14 made a pair longer than the model's positions)."""
    reranker = {"model": "fake-reranker", "documents": ["a man", "the horse"]}
    for words in (13, 14):
        response = await http.post("/v1/rerank", json={**reranker, "query": "a " * words})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "query" and error["code"] == "context_length_exceeded"
        assert f"query is {words} tokens long" in error["message"], error
        assert "at most 12" in error["message"], error
    response = await http.post("/v1/rerank", json={**reranker, "query": "a " * 12})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"query": "a", "documents": []}, 400, "documents"),
        ({"query": "", "documents": ["a"]}, 400, "query"),
        ({"query": "a", "documents": [{"title": "no text"}]}, 400, "documents[0]"),
        ({"query": "a", "documents": ["a"], "top_n": 0}, 400, "top_n"),
        ({"query": "a", "documents": ["a"], "top_k": -1}, 400, "top_k"),
        ({"query": "a " * 20, "documents": ["a"]}, 400, "query"),
        ({"model": "fake-kokoro", "query": "a", "documents": ["a"]}, 400, "model"),
        ({"model": "nope", "query": "a", "documents": ["a"]}, 404, "model"),
    ],
)
async def test_rerank_refusals(
    http: httpx.AsyncClient, body: dict[str, object], status: int, param: str
) -> None:
    response = await http.post("/v1/rerank", json={"model": "fake-embed", **body})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("document", [{"title": "no text"}, {"text": 3}, 3, None])
async def test_a_rerank_document_that_is_no_text_is_named(
    http: httpx.AsyncClient, document: object
) -> None:
    """What a document may be, not pydantic's first union branch ("Input should be a valid
    string", also for an object that only lacks `text`)."""
    body = {"model": "fake-embed", "query": "a", "documents": ["b", document]}
    response = await http.post("/v1/rerank", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "documents[1]"
    assert error["message"] == (
        "Invalid value for 'documents[1]': a document is a string or an object with a string 'text'"
    )


async def test_rerank_on_a_chat_model_asks_for_the_yes_and_no_logprobs(
    http: httpx.AsyncClient, chat: FakeEngine
) -> None:
    """The judging request on the scripted chat engine (tests/engines/test_rerank_llm.py checks
    the scores on a real one): one greedy token, the answers (either case) biased alike, their
    logprobs asked; the fake ignores the bias, so "n" is missing from its answer: a 500, not a
    score."""
    body = {"model": "fake", "query": "where is it", "documents": ["it is here"]}
    response = await http.post("/v1/rerank", json=body)
    sent = chat.requests[-1]
    prompt = "".join(chr(t) for t in sent.prompt_tokens)
    assert "<Query>: where is it\n<Document>: it is here" in prompt
    assert (sent.max_tokens, sent.logprobs, sent.sampling.temperature) == (1, 4, 0.0)
    assert sent.sampling.logit_bias == tuple((ord(c), 100.0) for c in "yYnN")
    assert response.status_code == 500
    assert "miss yes or no" in response.json()["error"]["message"]


# -- models file and batching ----------------------------------------------------------------


def test_kind_detected_from_the_checkpoint(tmp_path: Path) -> None:
    encoder = tmp_path / "minilm"
    (encoder / "1_Pooling").mkdir(parents=True)
    (encoder / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8})
    )
    (encoder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    chat = tmp_path / "chat"
    chat.mkdir()
    (chat / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    decoder = tmp_path / "qwen3-embedding"
    decoder.mkdir()
    (decoder / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 8}))
    (decoder / "modules.json").write_text('[{"path": "", "type": "x.Transformer"}]')
    assert detect_kind(encoder) == "embedding"
    assert detect_kind(decoder) == "embedding"
    assert detect_kind(chat) == "chat"
    assert detect_kind(tmp_path / "missing") == "chat"


def test_batches_are_fair_and_bounded() -> None:
    big = Pending([4] * 2048)
    small = Pending([30])
    chosen = choose([big, small], max_rows=64, max_tokens=100_000)
    assert len(chosen) == 64 and (1, 0) in chosen  # the single input rides the next pass
    assert len(big.order) == 2048 - 63 and not small.order
    groups = by_bucket(chosen, [big, small])
    assert [(width, len(rows)) for width, rows in groups] == [(16, 63), (32, 1)]


def test_batches_respect_the_token_budget_and_take_shortest_first() -> None:
    request = Pending([300, 10, 200, 12])
    first = choose([request], max_rows=64, max_tokens=600)
    assert first == [(0, 1), (0, 3)]  # 16-token rows; the 200-token one would need 3 x 256
    assert choose([request], max_rows=64, max_tokens=600) == [(0, 2)]  # alone, it always fits
    assert choose([request], max_rows=64, max_tokens=600) == [(0, 0)]
    assert choose([request], max_rows=64, max_tokens=600) == []
    assert [bucket(n) for n in (1, 16, 17, 300)] == [16, 16, 32, 512]
