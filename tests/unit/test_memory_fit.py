"""A model whose weights plus KV budget exceed what the device can use is refused before it
loads: one line at start-up (CLI), a 503 naming the model and the numbers over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engines.device_memory import MIN_KV_BYTES, ModelTooLarge, check_fits, usable_memory
from engines.pool import EnginePool, ModelSpec
from server import app as app_module
from server.__main__ import main
from server.app import build_pool, create_app
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.tiny import save_model_dir, tiny_model

GiB = 2**30
CHAT = {"model": "big", "messages": [{"role": "user", "content": "hi"}]}


def _big_pool(built: list[str]) -> EnginePool:
    def factory() -> FakeEngine:
        built.append("big")
        return FakeEngine("big", context_length=4096)

    return EnginePool(
        specs=[
            ModelSpec("small", "chat", lambda: FakeEngine("small", context_length=4096)),
            ModelSpec("big", "chat", factory, size_bytes=15 * GiB, kv_bytes=MIN_KV_BYTES),
        ],
        device_memory=(int(10.67 * GiB), "Metal's recommended working set"),
    )


def test_the_message_has_the_numbers() -> None:
    check_fits("m", 9 * GiB, GiB, 10 * GiB)  # exactly fits: no error
    with pytest.raises(ModelTooLarge) as caught:
        check_fits("m", 9 * GiB, GiB + 1, 10 * GiB, "RAM")
    assert caught.value.param == "model"
    assert caught.value.message.startswith(
        "model 'm' does not fit: it needs 10.00 GiB (weights 9.00 GiB + KV budget 1.00 GiB) and "
        "this device can use 10.00 GiB (RAM); use a smaller or quantized copy"
    )


def test_usable_memory_is_the_working_set_on_metal_else_ram() -> None:
    import os

    import mlx.core as mx

    figure, what = usable_memory()
    if mx.metal.is_available():
        wired = mx.device_info()["max_recommended_working_set_size"]
        assert (figure, what) == (wired, "Metal's recommended working set")
    elif not mx.cuda.is_available():
        assert (figure, what) == (os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "RAM")


async def test_a_request_for_a_model_too_large_gets_503_naming_it() -> None:
    built: list[str] = []
    app = create_app(Settings(), _big_pool(built))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        refused = await client.post("/v1/chat/completions", json=CHAT)
        small = await client.post("/v1/chat/completions", json=CHAT | {"model": "small"})
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["param"] == "model" and error["code"] == "model_unavailable"
    assert error["message"].startswith(
        "model 'big' does not fit: it needs 15.25 GiB (weights 15.00 GiB + KV budget 0.25 GiB) "
        "and this device can use 10.67 GiB (Metal's recommended working set)"
    )
    assert built == []  # refused before an engine was built, let alone loaded
    assert small.status_code == 200


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return save_model_dir(tiny_model(), "llama", tmp_path / "tiny")


def test_serve_refuses_a_model_too_large_in_one_line(
    tiny_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import uvicorn

    def serving(_: object) -> None:
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", serving)
    for name, value in (("HOME", str(tmp_path / "mlxd")), ("SPEECH_MODEL", ""),
                        ("EMBEDDING_MODEL", "")):  # fmt: skip
        monkeypatch.setenv(f"MLXD_{name}", value)
    monkeypatch.setattr(app_module, "usable_memory", lambda: (200 * 2**20, "RAM"))
    argv = ["serve", "--model", str(tiny_dir)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlxd: model 'tiny' does not fit: it needs 0.25 GiB (weights 0.00 GiB")
    assert "this device can use 0.20 GiB (RAM)" in err and err.count("\n") == 1
    monkeypatch.setenv("MLXD_KV_BUDGET_MB", "512")  # a configured KV budget counts in full
    monkeypatch.setattr(app_module, "usable_memory", lambda: (500 * 2**20, "RAM"))
    assert main(argv) == 1
    assert "KV budget 0.50 GiB" in capsys.readouterr().err


def test_the_default_budget_is_a_share_of_the_same_figure(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "usable_memory", lambda: (10 * GiB, "RAM"))
    settings = Settings(model=str(tiny_dir), speech_model="", embedding_model="")
    pool = build_pool(settings)
    assert pool.memory_budget_bytes == 7 * GiB
    assert pool.device_memory == (10 * GiB, "RAM")
