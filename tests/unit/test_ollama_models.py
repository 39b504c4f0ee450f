"""Ollama's model management against the hub stand-in (tests/hub_fixture.py), never the network:
`/api/pull` (NDJSON progress per file, or one `success`; errors as statuses before the stream,
as a last line after), the pulled model served and listed, `/api/delete` (only what mlxd
pulled, not what its configuration serves), and 501s for copy, create, push and blobs. Fake
engines serve the configured model; the live test chats with the pulled tiny model through the
official `ollama` client on a real socket."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from huggingface_hub import constants

from engines.pool import EnginePool, ModelSpec
from engines.weights.hub_cache import repo_folder
from server.__main__ import main
from server.app import build_pool, create_app
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.hub_fixture import TINY_REPO, FakeHub, FakeRepo
from tests.servers import serve, wait_until
from tests.tiny import tiny_model, write_gguf

REPO = TINY_REPO


def _app(tmp_path: Path, pool: EnginePool | None = None) -> Any:
    settings = Settings(home=tmp_path / "mlxd", max_body_bytes=1 << 20)
    return create_app(settings, pool or EnginePool([FakeEngine()]))


@pytest.fixture
async def http(tiny_hub: FakeHub, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = _app(tmp_path)
    await app.state.pool.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client
    await app.state.pool.drain(timeout=1)


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


async def _tags(http: httpx.AsyncClient) -> list[str]:
    return [model["name"] for model in (await http.get("/api/tags")).json()["models"]]


async def test_a_streamed_pull_reports_each_file_then_the_model_is_served(
    tiny_hub: FakeHub, tiny_dir: Path, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert await _tags(http) == ["fake"]
    response = await http.post("/api/pull", json={"model": REPO})
    assert response.status_code == 200, response.text
    lines = _lines(response)
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    for name in files:
        size = (tiny_dir / name).stat().st_size
        last = [line for line in lines if line["status"] == f"pulling {name}"][-1]
        assert last["total"] == last["completed"] == size, last
    weights = (tiny_dir / "model.safetensors").read_bytes()
    digests = {line["status"]: line["digest"] for line in lines if "digest" in line}
    assert digests["pulling model.safetensors"] == f"sha256:{hashlib.sha256(weights).hexdigest()}"
    assert digests["pulling config.json"] == "config.json"  # a small file: no LFS sha256
    assert await _tags(http) == ["fake", REPO]
    snapshot = next((repo_folder(tmp_path / "hf", REPO) / "snapshots").iterdir())
    assert (snapshot / "model.safetensors").read_bytes() == weights


async def test_an_unstreamed_pull_answers_success_once(
    tiny_hub: FakeHub, http: httpx.AsyncClient
) -> None:
    response = await http.post("/api/pull", json={"name": f"hf.co/{REPO}:latest", "stream": False})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success"}
    assert REPO in await _tags(http)
    again = await http.post("/api/pull", json={"model": REPO, "stream": False})
    assert again.json() == {"status": "success"} and (await _tags(http)).count(REPO) == 1


@pytest.mark.parametrize("stream", [True, False])
async def test_pull_errors_are_ollama_errors_with_a_status(
    tiny_hub: FakeHub, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    cases = [
        ({"model": "llama3.2"}, 400, "is not a Hugging Face repo"),
        ({"model": f"{REPO}@v2"}, 400, "names a revision"),
        ({}, 400, "model is required"),
        ({"model": "org/missing"}, 404, "no model repo 'org/missing'"),
        ({"model": f"{REPO}:Q4_K_M"}, 404, "no GGUF file for quant 'Q4_K_M'"),
    ]
    for body, status, message in cases:
        response = await http.post("/api/pull", json=body | {"stream": stream})
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error"} and message in response.json()["error"]
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    unreachable = await http.post("/api/pull", json={"model": REPO, "stream": stream})
    assert unreachable.status_code == 502
    assert "cannot reach http://127.0.0.1:9" in unreachable.json()["error"]
    assert REPO not in await _tags(http)


async def test_a_download_failing_midway_ends_the_stream_with_an_error_line(
    tiny_hub: FakeHub, http: httpx.AsyncClient
) -> None:
    tiny_hub.drop_after["model.safetensors"] = 100  # the network goes away within the weights
    streamed = _lines(await http.post("/api/pull", json={"model": REPO}))
    assert streamed[0] == {"status": "pulling manifest"}
    assert (
        set(streamed[-1]) == {"error"} and "run the pull again to resume" in streamed[-1]["error"]
    )
    whole = await http.post("/api/pull", json={"model": REPO, "stream": False})
    assert whole.status_code == 502 and "model.safetensors" in whole.json()["error"]
    assert REPO not in await _tags(http)
    tiny_hub.drop_after.clear()  # back: the next pull resumes and succeeds
    assert _lines(await http.post("/api/pull", json={"model": REPO}))[-1] == {"status": "success"}


async def test_concurrent_pulls_fetch_a_file_once_and_a_delete_meanwhile_is_refused(
    tiny_hub: FakeHub, tiny_dir: Path, http: httpx.AsyncClient
) -> None:
    tiny_hub.gate.clear()  # the weights wait until the test opens it
    body = {"model": REPO, "stream": False}
    pulls = [asyncio.create_task(http.post("/api/pull", json=body)) for _ in range(2)]
    await wait_until(lambda: any(" /cdn/" in request for request in tiny_hub.requests), timeout=10)
    busy = await http.request("DELETE", "/api/delete", json={"model": REPO})
    assert busy.status_code == 409, busy.text
    assert busy.json() == {"error": f"model '{REPO}' is being pulled; delete it when that is done"}
    tiny_hub.gate.set()
    assert [(await pull).json() for pull in pulls] == [{"status": "success"}] * 2
    assert tiny_hub.served["model.safetensors"] == (tiny_dir / "model.safetensors").stat().st_size
    assert (await _tags(http)).count(REPO) == 1


async def test_a_pull_of_a_configured_hub_model_waits_for_its_own_download(
    tiny_hub: FakeHub, tiny_dir: Path, tmp_path: Path
) -> None:
    tiny_hub.gate.clear()
    settings = Settings(model=REPO, speech_model="", embedding_model="", home=tmp_path / "mlxd")
    app = create_app(settings)  # serves REPO, downloaded on first use
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        await app.state.pool.start()  # starts the download: REPO is preloaded
        pull = asyncio.create_task(http.post("/api/pull", json={"model": REPO, "stream": False}))
        await wait_until(
            lambda: any(" /cdn/" in request for request in tiny_hub.requests), timeout=10
        )
        tiny_hub.gate.set()
        assert (await pull).json() == {"status": "success"}
        assert await _tags(http) == [REPO]
        await app.state.pool.drain(timeout=5)
    assert tiny_hub.served["model.safetensors"] == (tiny_dir / "model.safetensors").stat().st_size
    assert not (tmp_path / "mlxd" / "pulled.json").exists()  # configured, not pulled


async def test_offline_only_a_model_already_here_is_pulled(
    tiny_hub: FakeHub, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    refused = await http.post("/api/pull", json={"model": REPO, "stream": False})
    assert refused.status_code == 404 and "HF_HUB_OFFLINE is set" in refused.json()["error"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["pull", REPO]) == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    tiny_hub.requests.clear()
    pulled = await http.post("/api/pull", json={"model": REPO, "stream": False})
    assert pulled.json() == {"status": "success"} and REPO in await _tags(http)
    assert tiny_hub.requests == []


async def test_delete_removes_what_mlxd_pulled_and_nothing_else(
    tiny_hub: FakeHub, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    folder = repo_folder(tmp_path / "hf", REPO)
    await http.post("/api/pull", json={"model": REPO, "stream": False})
    deleted = await http.request("DELETE", "/api/delete", json={"model": f"hf.co/{REPO}:latest"})
    assert deleted.status_code == 200 and deleted.content == b""
    assert REPO not in await _tags(http) and not folder.exists()
    again = await http.request("DELETE", "/api/delete", json={"name": REPO})
    assert again.status_code == 404 and again.json() == {"error": f"model '{REPO}' not found"}
    configured = await http.request("DELETE", "/api/delete", json={"model": "fake"})
    assert configured.status_code == 409 and "configured for this server" in configured.text
    (folder / "snapshots" / "0" / "config.json").parent.mkdir(parents=True)  # another tool's
    assert (await http.request("DELETE", "/api/delete", json={"model": REPO})).status_code == 404
    assert folder.exists()
    assert main(["pull", REPO]) == 0  # mlxd's own pull, not served: deleted
    assert (await http.request("DELETE", "/api/delete", json={"model": REPO})).status_code == 200
    assert not folder.exists()
    missing = await http.request("DELETE", "/api/delete", json={})
    assert missing.status_code == 400 and missing.json() == {"error": "model is required"}


async def test_a_gguf_quant_is_pulled_imported_served_and_deleted(
    tiny_hub: FakeHub, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    gguf = write_gguf(tiny_model(), "llama", tmp_path / "tiny-F32.gguf")
    tiny_hub.repos["org/tiny-GGUF"] = FakeRepo(
        {gguf.name: gguf.read_bytes(), "tiny-Q8_0.gguf": b"x"}
    )
    lines = _lines(await http.post("/api/pull", json={"model": "hf.co/org/tiny-GGUF:F32"}))
    assert [line["status"] for line in lines if "digest" in line][-1] == "pulling tiny-F32.gguf"
    assert lines[-1] == {"status": "success"} and "tiny-Q8_0.gguf" not in tiny_hub.served
    assert "org/tiny-GGUF:F32" in await _tags(http)
    imported = tmp_path / "mlxd" / "models" / "org--tiny-GGUF--F32"
    assert imported.is_dir()
    deleted = await http.request("DELETE", "/api/delete", json={"model": "org/tiny-GGUF:F32"})
    assert deleted.status_code == 200 and not imported.exists()
    assert "org/tiny-GGUF:F32" not in await _tags(http)


async def test_a_pulled_model_is_served_again_after_a_restart_until_deleted(
    tiny_hub: FakeHub, tiny_dir: Path, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    home = tmp_path / "mlxd"
    settings = Settings(model=str(tiny_dir), speech_model="", embedding_model="", home=home)
    await http.post("/api/pull", json={"model": REPO, "stream": False})
    tiny_hub.requests.clear()
    restarted = [(m.name, m.loaded) for m in build_pool(settings).models()]
    assert restarted == [(tiny_dir.name, False), (REPO, False)] and tiny_hub.requests == []
    configured = settings.model_copy(update={"model": REPO})  # named by --model: served so
    assert [m.name for m in build_pool(configured).models()] == [REPO]
    await http.request("DELETE", "/api/delete", json={"model": REPO})
    assert [m.name for m in build_pool(settings).models()] == [tiny_dir.name]
    await http.post("/api/pull", json={"model": REPO, "stream": False})
    assert main(["rm", REPO]) == 0  # its files deleted behind the server's back: not served
    assert [m.name for m in build_pool(settings).models()] == [tiny_dir.name]
    assert (home / "pulled.json").read_text().count(REPO) == 1
    transport = httpx.ASGITransport(app=_app(tmp_path))  # a restarted server
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as fresh:
        gone = await fresh.request("DELETE", "/api/delete", json={"model": REPO})
    assert gone.status_code == 404  # and the record of it dropped
    assert json.loads((home / "pulled.json").read_text()) == {"models": []}


async def test_delete_keeps_the_files_a_configured_model_serves(
    tiny_hub: FakeHub, tmp_path: Path
) -> None:
    assert main(["pull", REPO]) == 0
    coder = ModelSpec("coder", "chat", FakeEngine, source=REPO)  # a models-file entry
    app = _app(tmp_path, EnginePool(specs=[coder]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        refused = await http.request("DELETE", "/api/delete", json={"model": REPO})
    assert refused.status_code == 409, refused.text
    assert refused.json() == {
        "error": f"model '{REPO}' holds the files of 'coder', which this server is configured "
        "to serve"
    }
    assert repo_folder(tmp_path / "hf", REPO).exists()


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("POST", "/api/copy", "mlxd does not copy models"),
        ("POST", "/api/create", "mlxd does not create models from Modelfiles"),
        ("POST", "/api/push", "mlxd does not push models"),
        ("POST", "/api/blobs/sha256:00", "mlxd does not take model files"),
    ],
)
async def test_unsupported_routes_say_so_in_ollamas_shape(
    tmp_path: Path, method: str, path: str, message: str
) -> None:
    transport = httpx.ASGITransport(app=_app(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await http.request(method, path, json={"model": "x"})
        assert response.status_code == 501
        assert set(response.json()) == {"error"} and message in response.json()["error"]
        assert (await http.head("/api/blobs/sha256:00")).status_code == 501


def test_progress_reaches_the_client_while_a_file_is_still_downloading(
    tiny_hub: FakeHub, tmp_path: Path
) -> None:
    chunk = 10 << 20  # huggingface_hub's http_get writes 10 MiB at a time
    weights = os.urandom(chunk + 4096)
    tiny_hub.repos["org/big"] = FakeRepo({"config.json": b"{}", "model.safetensors": weights})
    tiny_hub.pause_after["model.safetensors"] = chunk  # the rest waits for the gate
    tiny_hub.gate.clear()
    with (
        serve(_app(tmp_path)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
        http.stream("POST", "/api/pull", json={"model": "org/big"}) as response,
    ):
        lines = (json.loads(raw) for raw in response.iter_lines())
        held = next(line for line in lines if line.get("completed") == chunk)
        assert held["total"] == len(weights) and not tiny_hub.gate.is_set()
        tiny_hub.gate.set()  # the download resumes for the rest
        rest = list(lines)
    assert rest[-1] == {"status": "success"}
    assert [line["completed"] for line in rest if "completed" in line][-1] == len(weights)


def test_the_ollama_client_pulls_chats_and_deletes_on_a_live_server(
    tiny_hub: FakeHub, tmp_path: Path
) -> None:
    with serve(_app(tmp_path)) as url, ollama.Client(host=url, timeout=120) as client:
        progress = list(client.pull(REPO, stream=True))
        assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
        weights = [p for p in progress if p.status == "pulling model.safetensors"]
        assert weights[-1].completed == weights[-1].total and weights[-1].digest
        assert client.pull(REPO).status == "success"  # the client's default: not streamed
        assert [model.model for model in client.list().models] == ["fake", REPO]
        reply = client.chat(REPO, [{"role": "user", "content": "hi"}], options={"num_predict": 3})
        assert reply.done and reply.eval_count == 3
        assert client.delete(REPO).status == "success"
        assert [model.model for model in client.list().models] == ["fake"]
        with pytest.raises(ollama.ResponseError) as gone:
            client.delete(REPO)
        assert gone.value.status_code == 404 and gone.value.error == f"model '{REPO}' not found"
        with pytest.raises(ollama.ResponseError) as unknown:
            list(client.pull("org/missing", stream=True))
        assert unknown.value.status_code == 404 and "org/missing" in unknown.value.error
        with pytest.raises(ollama.ResponseError) as copied:
            client.copy("fake", "other")
        assert copied.value.status_code == 501 and "aliases" in copied.value.error
