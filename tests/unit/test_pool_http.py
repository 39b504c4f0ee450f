"""The pool over HTTP: admin load/unload, lazy reloads under concurrent requests, `loaded` in
/v1/models, the models file's validation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engines.errors import EngineUnavailable
from engines.pool import EnginePool, ModelSpec
from server.app import create_app
from server.config import ConfigError, load_models_file
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.servers import serve

CHAT = {"model": "main", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def url() -> Iterator[str]:
    pool = EnginePool(
        specs=[
            ModelSpec("main", "chat", lambda: FakeEngine("main", context_length=4096),
                      aliases=("default",), preload=True),
            ModelSpec("other", "chat", lambda: FakeEngine("other", context_length=4096)),
        ]
    )  # fmt: skip
    with serve(create_app(Settings(api_key="k"), pool)) as base:
        yield base


def loaded(http: httpx.Client) -> dict[str, bool]:
    return {m["id"]: m["loaded"] for m in http.get("/v1/models").json()["data"]}


async def test_unload_then_six_concurrent_requests_reload_it(url: str) -> None:
    headers = {"Authorization": "Bearer k"}
    with httpx.Client(base_url=url, headers=headers) as http:
        assert loaded(http) == {"main": True, "other": False}
        response = http.post("/v1/models/main/unload")
        assert response.status_code == 200 and response.json()["loaded"] is False
        assert loaded(http)["main"] is False
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=CHAT) for _ in range(6))
        )
    assert [r.status_code for r in responses] == [200] * 6
    with httpx.Client(base_url=url, headers=headers) as http:
        assert loaded(http)["main"] is True
        assert http.post("/v1/models/other/load").json()["loaded"] is True
        via_alias = http.post("/v1/chat/completions", json={**CHAT, "model": "default"})
        assert via_alias.status_code == 200
        assert http.get("/v1/models/default").json()["id"] == "main"


def test_admin_routes_need_the_key_and_a_known_model(url: str) -> None:
    assert httpx.post(f"{url}/v1/models/main/unload").status_code == 401
    missing = httpx.post(f"{url}/v1/models/nope/load", headers={"Authorization": "Bearer k"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_models_file_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "models.toml"
    good.write_text(
        'memory_budget_mb = 2048\n[[models]]\nname = "chat"\nsource = "smollm2-135m-instruct"\n'
        'aliases = ["default"]\nidle_ttl_s = 60\n'
    )
    parsed = load_models_file(good)
    assert parsed.memory_budget_mb == 2048 and parsed.models[0].aliases == ["default"]
    typo = tmp_path / "typo.toml"
    typo.write_text('[[models]]\nname = "chat"\nsource = "x"\nidle_ttl = 60\n')
    with pytest.raises(ConfigError, match=r"models\.0\.idle_ttl"):
        load_models_file(typo)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[models]\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_models_file(broken)
    latin1 = tmp_path / "latin1.toml"  # not UTF-8: the error names the file too
    latin1.write_bytes('[[models]]\nname = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml: .*utf-8"):
        load_models_file(latin1)


def test_a_chat_template_that_does_not_parse_is_a_start_up_error(tmp_path: Path) -> None:
    """Served, it failed every chat request with a 400 blaming `messages`, /health said ok."""
    entry = '[[models]]\nname = "chat"\nsource = "x"\nchat_template = """{}"""\n'
    broken = tmp_path / "broken.toml"
    broken.write_text(entry.format("{% for m in messages %}{{ m.content }}\n{% if %}"))
    with pytest.raises(ConfigError, match=r"models\.0\.chat_template: line 2: Expected an"):
        load_models_file(broken)
    # What transformers' templates use parses: loop controls, generation blocks.
    good = tmp_path / "good.toml"
    template = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
    good.write_text(entry.format(template + "{% break %}{% endfor %}"))
    assert load_models_file(good).models[0].chat_template is not None


def test_models_file_sampling_defaults_fill_what_requests_leave_out() -> None:
    fake = FakeEngine("tuned", context_length=4096)
    spec = ModelSpec("tuned", "chat", lambda: fake, preload=True,
                     sampling_defaults=(("temperature", 0.3), ("top_k", 40.0)))  # fmt: skip
    with serve(create_app(Settings(), EnginePool(specs=[spec]))) as base:
        body = {"model": "tuned", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{base}/v1/chat/completions", json=body).status_code == 200
        assert (fake.requests[-1].sampling.temperature, fake.requests[-1].sampling.top_k) == (
            0.3,
            40,
        )
        body["temperature"] = 0.9  # what the request sends wins
        assert httpx.post(f"{base}/v1/chat/completions", json=body).status_code == 200
        assert fake.requests[-1].sampling.temperature == 0.9


def test_health_names_a_preloaded_model_that_failed_to_load() -> None:
    class Broken(FakeEngine):
        async def wait_loaded(self) -> None:
            raise EngineUnavailable("model 'bad' failed to load: weights do not match")

    pool = EnginePool(
        specs=[
            ModelSpec("main", "chat", lambda: FakeEngine("main"), preload=True),
            ModelSpec("bad", "chat", lambda: Broken("bad"), preload=True),
            ModelSpec("lazy", "chat", lambda: FakeEngine("lazy")),
        ]
    )
    with serve(create_app(Settings(), pool)) as base, httpx.Client(base_url=base) as http:
        health = http.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "unavailable" and body["models"] == ["main"]
        assert list(body["missing"]) == ["bad"] and "weights do not match" in body["missing"]["bad"]
        refused = http.post("/v1/chat/completions", json={**CHAT, "model": "bad"})
        assert refused.status_code == 503 and "weights do not match" in refused.text
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
