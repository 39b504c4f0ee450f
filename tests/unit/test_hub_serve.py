"""Serving a hub repo by its id: downloaded on first use (503 + Retry-After and "downloading NN%"
meanwhile), then served; once in the cache, start-up and requests make no network call. And the
CLI: pull / models list / rm, and one-line errors for bad start-ups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import mlx.core as mx
import pytest
from huggingface_hub import constants

from engines.weights.store import ModelStore
from server.__main__ import main
from server.app import create_app
from server.doctor import check_hub
from server.settings import Settings
from tests.hub_fixture import TINY_REPO, FakeHub, FakeRepo, mlx_lm_quantized_copy
from tests.tiny import tiny_model, write_gguf

REPO = TINY_REPO
CHAT = {"model": REPO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def tiny_4bit_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What mlx-community would publish for the tiny model: mlx-lm's converter, 4-bit."""
    return mlx_lm_quantized_copy(tiny_dir, tmp_path_factory.mktemp("q") / "tiny-4bit")


def _settings(tmp_path: Path, model: str = REPO) -> Settings:
    return Settings(model=model, speech_model="", embedding_model="", home=tmp_path / "mlxd")


@asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    pool = app.state.pool
    await pool.start()  # ASGITransport runs no lifespan
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client
    finally:
        await pool.drain(5)


async def test_a_repo_downloads_on_first_use_then_serves(tiny_hub: FakeHub, tmp_path: Path) -> None:
    tiny_hub.gate.clear()  # hold the weights until the test has seen the download in progress
    async with _client(_settings(tmp_path)) as client:
        refused = await client.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert "being downloaded" in refused.json()["error"]["message"]
        listed = (await client.get("/v1/models")).json()["data"]
        assert listed[0]["id"] == REPO and listed[0]["status"].startswith("downloading ")
        status = (await client.get("/status")).json()["models"][0]
        assert status["status"].startswith("downloading ")
        tiny_hub.gate.set()

        async def loaded() -> bool:
            return bool((await client.get("/v1/models")).json()["data"][0]["loaded"])

        for _ in range(300):  # poll: the download finishes, then the engine loads
            if await loaded():
                break
            await asyncio.sleep(0.05)
        served = await client.post("/v1/chat/completions", json=CHAT)
        assert served.status_code == 200, served.text
        assert served.json()["usage"]["completion_tokens"] == 3


async def test_a_cached_repo_starts_and_serves_without_the_network(
    tiny_hub: FakeHub, tmp_path: Path
) -> None:
    assert main(["pull", REPO]) == 0
    tiny_hub.requests.clear()
    async with _client(_settings(tmp_path)) as client:
        assert (await client.get("/v1/models")).json()["data"][0]["loaded"] is True
        served = await client.post("/v1/chat/completions", json=CHAT)
        assert served.status_code == 200, served.text
    assert tiny_hub.requests == []


def test_pull_list_and_rm(
    tiny_hub: FakeHub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLXD_PORT", "9")  # no server answers: models list shows what is local
    assert main(["pull", REPO]) == 0
    assert f"{REPO} ready: " in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"  {REPO}  0.4 MiB" in listed
    assert main(["rm", REPO]) == 0
    assert f"removed {REPO} from the Hugging Face cache" in capsys.readouterr().out
    assert main(["rm", REPO]) == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pull", "org/nope"], "mlxd: no model repo 'org/nope' at http://127.0.0.1:"),
        (["pull", "not a repo"], "mlxd: 'not a repo' is not a repo id"),
        (["serve", "--model", "no-such-model"], "mlxd: model 'no-such-model' is neither"),
        (["serve", "--config", "MODELS"], "models.0.bogus: Extra inputs are not permitted"),
    ],
)
def test_command_errors_are_one_line(
    tiny_hub: FakeHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text('[[models]]\nname = "a"\nsource = "x"\nbogus = 1\n')
    argv = [str(models_file) if arg == "MODELS" else arg for arg in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_doctor_reports_the_hub_cache_and_reachability(
    tiny_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["pull", REPO]) == 0
    cache, reach = check_hub()
    assert "1 model repo(s), 0.00 GiB" in cache.facts and cache.fix is None
    assert f"{tiny_hub.endpoint} reachable (HTTP 200)" in reach.facts
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert "unreachable" in check_hub()[1].facts
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert check_hub()[1].facts == "offline (HF_HUB_OFFLINE is set)"


def test_a_gguf_repo_pulls_the_named_quant_and_imports_it(
    tiny_hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf = write_gguf(tiny_model(), "llama", tmp_path / "tiny-F32.gguf")
    other = b"another quant, never fetched"
    tiny_hub.repos["org/tiny-GGUF"] = FakeRepo(
        {gguf.name: gguf.read_bytes(), "tiny-Q8_0.gguf": other}
    )
    assert main(["pull", "org/tiny-GGUF"]) == 1
    assert "name a quant after a colon, REPO:F32 (offered: F32, Q8_0)" in capsys.readouterr().err
    assert main(["pull", "org/tiny-GGUF:F32"]) == 0
    assert "tiny-Q8_0.gguf" not in tiny_hub.served
    store = ModelStore(tmp_path / "mlxd")
    name, path = store.resolve("org/tiny-GGUF:F32")
    assert name == "org/tiny-GGUF:F32" and path == store.path_for("org--tiny-GGUF--F32")
    assert (path / "config.json").is_file() and (path / "IMPORTED").is_file()


async def test_a_4bit_repo_made_by_mlx_lm_pulls_and_serves(
    tiny_hub: FakeHub, tmp_path: Path, tiny_4bit_dir: Path
) -> None:
    tiny_hub.repos["org/tiny-4bit"] = FakeRepo.from_dir(tiny_4bit_dir)
    assert main(["pull", "org/tiny-4bit"]) == 0
    async with _client(_settings(tmp_path, "org/tiny-4bit")) as client:
        served = await client.post("/v1/chat/completions", json=CHAT | {"model": "org/tiny-4bit"})
        assert served.status_code == 200, served.text
        assert served.json()["usage"]["completion_tokens"] == 3


async def test_pull_quantize_puts_mlx_lm_s_4bit_copy_in_the_store(
    tiny_hub: FakeHub, tmp_path: Path, tiny_4bit_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pull", REPO, "--quantize", "4"]) == 0
    assert "tiny-4bit ready: " in capsys.readouterr().out
    path = ModelStore(tmp_path / "mlxd").path_for("tiny-4bit")
    ours = mx.load(str(path / "model.safetensors"))
    theirs = mx.load(str(tiny_4bit_dir / "model.safetensors"))
    assert isinstance(ours, dict) and isinstance(theirs, dict) and ours.keys() == theirs.keys()
    assert all(mx.array_equal(ours[key], theirs[key]).item() for key in ours)
    async with _client(_settings(tmp_path, "tiny-4bit")) as client:
        served = await client.post("/v1/chat/completions", json=CHAT | {"model": "tiny-4bit"})
        assert served.status_code == 200, served.text


async def test_a_model_downloaded_while_serving_counts_against_the_memory_budget(
    tiny_hub: FakeHub, tmp_path: Path, tiny_dir: Path
) -> None:
    """Both models weigh the same; the budget holds one: loading the local one must unload the
    downloaded one, which counts its weights once its download is done."""
    models = tmp_path / "models.toml"
    models.write_text(
        f'[[models]]\nname = "hubbed"\nsource = "{REPO}"\n\n'
        f'[[models]]\nname = "local"\nsource = "{tiny_dir}"\n'
    )
    settings = Settings(config=models, speech_model="", embedding_model="", home=tmp_path / "m")
    app = create_app(settings)
    pool = app.state.pool
    weights = ModelStore(tmp_path).size_bytes(tiny_dir)
    pool.memory_budget_bytes = 2 * weights - 1
    await pool.start()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for _ in range(300):  # 503 while it downloads, then served
                hubbed = await client.post("/v1/chat/completions", json=CHAT | {"model": "hubbed"})
                if hubbed.status_code != 503:
                    break
                await asyncio.sleep(0.05)
            assert hubbed.status_code == 200, hubbed.text
            local = await client.post("/v1/chat/completions", json=CHAT | {"model": "local"})
            assert local.status_code == 200, local.text
        assert pool.engine("local") is not None and pool.engine("hubbed") is None
    finally:
        await pool.drain(5)


def test_pull_says_when_the_model_could_never_load_here(
    tiny_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engines import device_memory

    monkeypatch.setattr(device_memory, "usable_memory", lambda: (2**20, "RAM"))
    assert main(["pull", REPO]) == 0  # pulled all the same: it may be quantized next
    err = capsys.readouterr().err
    assert f"mlxd: note: model '{REPO}' does not fit: it needs 0.25 GiB" in err
    assert "this device can use 0.00 GiB (RAM); use a smaller or quantized copy" in err
