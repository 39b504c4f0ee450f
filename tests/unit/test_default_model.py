"""Model names agents send: aliases (`claude-opus-5-5`, `gpt-5`) on every chat front end, and the
default model for names not configured — off unless configured, of its own kind only, never making
an unknown name a model that exists (`/v1/models/{id}` stays 404)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from engines.errors import ModelNotFound
from engines.kinds import CHAT, SPEECH
from engines.pool import EnginePool, ModelSpec
from server.app import create_app
from server.config import ConfigError, load_models_file
from server.settings import Settings
from tests.fakes import FakeEngine, FakeSpeechEngine
from tests.helpers import assert_openai_error

ALIASES = ("claude-opus-5-5", "gpt-5")
HI = [{"role": "user", "content": "hi"}]


def pool_of(engine: FakeEngine, default_model: str | None) -> EnginePool:
    specs = [
        ModelSpec("local", "chat", lambda: engine, aliases=ALIASES, pinned=True, preload=True),
        ModelSpec("whisper", "speech", lambda: FakeSpeechEngine("whisper"), preload=True),
    ]
    return EnginePool(specs=specs, default_model=default_model)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine("local", context_length=4096)


async def client_for(pool: EnginePool) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(max_body_bytes=1 << 20), pool)
    await pool.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http
    await pool.drain(timeout=1)


@pytest.fixture
async def strict(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    """No default model: only names and aliases are served."""
    async for http in client_for(pool_of(engine, None)):
        yield http


@pytest.fixture
async def defaulted(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    """Unknown chat names are served by `local` (configured by its alias)."""
    async for http in client_for(pool_of(engine, "gpt-5")):
        yield http


def requests_for(model: str) -> list[tuple[str, dict[str, object]]]:
    """One request per chat front end, naming `model`."""
    return [
        ("/v1/chat/completions", {"model": model, "messages": HI}),
        ("/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 5}),
        ("/v1/responses", {"model": model, "input": "hi"}),
        ("/v1/messages", {"model": model, "max_tokens": 50, "messages": HI}),
        ("/v1/messages/count_tokens", {"model": model, "messages": HI}),
    ]


@pytest.mark.parametrize("alias", ALIASES)
async def test_aliases_reach_the_model_on_every_front_end(
    strict: httpx.AsyncClient, engine: FakeEngine, alias: str
) -> None:
    for path, body in requests_for(alias):
        response = await strict.post(path, json=body)
        assert response.status_code == 200, (path, response.text)
    assert len(engine.requests) == 4  # count_tokens runs nothing
    answered = await strict.post("/v1/responses", json={"model": alias, "input": "hi"})
    assert answered.json()["model"] == alias  # the name the client sent, echoed


async def test_unknown_names_are_404_in_each_apis_shape_without_a_default(
    strict: httpx.AsyncClient, engine: FakeEngine
) -> None:
    for path, body in requests_for("claude-haiku-4-5"):
        response = await strict.post(path, json=body)
        if path.startswith("/v1/messages"):
            assert response.status_code == 404, response.text
            error = response.json()
            assert error["type"] == "error" and error["error"]["type"] == "not_found_error"
            assert "claude-haiku-4-5" in error["error"]["message"]
        else:
            assert_openai_error(response, 404, "model", "model_not_found")
    assert engine.requests == []


async def test_a_default_model_serves_unknown_chat_names(
    defaulted: httpx.AsyncClient, engine: FakeEngine
) -> None:
    for path, body in requests_for("claude-haiku-4-5"):
        response = await defaulted.post(path, json=body)
        assert response.status_code == 200, (path, response.text)
    assert len(engine.requests) == 4
    metrics = (await defaulted.get("/metrics")).text
    assert 'model="local"' in metrics and "claude-haiku-4-5" not in metrics  # bounded labels
    # it serves requests; it does not make the name a model that exists
    assert_openai_error(await defaulted.get("/v1/models/claude-haiku-4-5"), 404, "model")
    listed = [m["id"] for m in (await defaulted.get("/v1/models")).json()["data"]]
    assert "claude-haiku-4-5" not in listed


async def test_the_default_serves_its_own_kind_only(engine: FakeEngine) -> None:
    pool = pool_of(engine, "local")
    await pool.start()
    try:
        assert (await pool.acquire("anything", CHAT)).name == "local"
        with pytest.raises(ModelNotFound):
            await pool.acquire("anything", SPEECH)
        assert (await pool.acquire("whisper", SPEECH)).name == "whisper"
    finally:
        await pool.drain(timeout=1)


def test_a_default_that_names_no_model_is_refused(engine: FakeEngine, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'nope' is not a configured model"):
        pool_of(engine, "nope")
    models = '[[models]]\nname = "chat"\nsource = "x"\naliases = ["claude-opus-5-5"]\n'
    good = tmp_path / "good.toml"
    good.write_text('default_model = "claude-opus-5-5"\n' + models)
    assert load_models_file(good).default_model == "claude-opus-5-5"
    bad = tmp_path / "bad.toml"
    bad.write_text('default_model = "gpt-5"\n' + models)
    with pytest.raises(ConfigError, match="default_model 'gpt-5' names no model of this file"):
        load_models_file(bad)


async def test_a_default_chat_model_judges_reranks_of_unknown_names(
    defaulted: httpx.AsyncClient, strict: httpx.AsyncClient, engine: FakeEngine
) -> None:
    """The default model serves /v1/rerank too (rerank takes chat and embedding models). The fake
    ignores the answers' bias, so its judgement ends in a 500 (test_embeddings_contract.py says
    why); what matters here is that the judging request reached it instead of a 404."""
    body = {"model": "claude-opus-9", "query": "where is it", "documents": ["it is here"]}
    response = await defaulted.post("/v1/rerank", json=body)
    prompt = "".join(chr(t) for t in engine.requests[-1].prompt_tokens)
    assert "<Query>: where is it\n<Document>: it is here" in prompt
    assert response.status_code == 500 and "miss yes or no" in response.text
    assert_openai_error(await strict.post("/v1/rerank", json=body), 404, "model")
