"""End-to-end: Ollama's API on the embedded models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)
through the official `ollama` client on a real socket: the same greedy answer through
`/api/chat` as through `/v1/chat/completions`, streamed or not, a raw generate, a JSON schema
answered as one, and MiniLM's vectors (sentence-transformers' cosine)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import ollama
import pytest

from engines.weights.embedded import SMOLLM2
from engines.weights.packaged_embeddings import ALL_MINILM_L6_V2
from tests.helpers import LiveServer

MODEL = SMOLLM2.name
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 40}


@pytest.fixture
def client(live: LiveServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=live.url, timeout=300) as client:
        yield client


def test_chat_answers_as_the_openai_route_does(live: LiveServer, client: ollama.Client) -> None:
    reply = client.chat(model=MODEL, messages=FRANCE, options=GREEDY)
    openai = live.client().chat.completions.create(
        model=MODEL,
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=40,
    )
    assert reply.message.content == openai.choices[0].message.content
    assert "Paris" in (reply.message.content or "")
    assert openai.usage is not None and reply.prompt_eval_count == openai.usage.prompt_tokens
    streamed = list(client.chat(model=MODEL, messages=FRANCE, options=GREEDY, stream=True))
    assert "".join(part.message.content or "" for part in streamed) == reply.message.content
    assert streamed[-1].done and streamed[-1].eval_count == reply.eval_count


def test_raw_generate_and_a_json_schema(client: ollama.Client) -> None:
    raw = client.generate(model=MODEL, prompt="The capital of France is", raw=True, options=GREEDY)
    assert "Paris" in (raw.response or "")
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    answer = client.chat(model=MODEL, messages=FRANCE, format=schema, options={"temperature": 0})
    assert set(json.loads(answer.message.content or "")) == {"city", "country"}


def test_embed_gives_minilms_vectors(client: ollama.Client) -> None:
    sentences = ["A man is eating food.", "A man is eating a piece of bread."]
    first, second = np.array(client.embed(model=ALL_MINILM_L6_V2.name, input=sentences).embeddings)
    assert abs(float(first @ second) - 0.755) < 1e-3  # sentence-transformers: 0.755
