"""The status page: `/status` data, and the page itself rendered in headless Chromium (Debian's
`chromium`, installed by .ci/run), whose numbers must move while a request runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator

import httpx
import pytest

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine, FakeSpeechEngine
from tests.servers import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def server() -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine(reply="word " * 400, token_delay_s=0.02, context_length=4096)
    app = create_app(Settings(api_key="secret"), EnginePool([engine, FakeSpeechEngine()]))
    with serve(app) as url:
        yield url, engine


def test_status_data_needs_no_key(server: tuple[str, FakeEngine]) -> None:
    url, _ = server
    status = httpx.get(f"{url}/status").json()
    assert status["runtime"]["backend"] in ("cpu", "metal", "cuda")
    assert [(m["id"], m["kind"]) for m in status["models"]] == [
        ("fake", "chat"),
        ("fake-whisper", "speech"),
    ]
    assert status["active"] == 0
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" in page.text and "http" not in page.text.split("<script")[0].lower()
    assert httpx.get(f"{url}/v1/models").status_code == 401  # everything else keeps its key


def rendered(url: str) -> str:
    assert CHROMIUM is not None
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=4000",
            "--dump-dom",
            f"{url}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def number(dom: str, element: str) -> str:
    match = re.search(rf'id="{element}">([^<]*)<', dom)
    assert match, dom[:2000]
    return match.group(1)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_page_renders_and_follows_a_running_request(server: tuple[str, FakeEngine]) -> None:
    url, engine = server
    idle = rendered(url)
    assert number(idle, "active") == "0"
    assert "fake-whisper" in idle and "backend" in idle
    assert f"{url}/v1" in idle  # the snippets carry the real base URL

    body = {"model": "fake", "messages": [{"role": "user", "content": "go"}], "max_tokens": 400}
    headers = {"Authorization": "Bearer secret"}
    worker = threading.Thread(
        target=lambda: httpx.post(
            f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ),
    )
    worker.start()
    try:
        busy = rendered(url)
    finally:
        # The request was kept running (8 s of tokens) only for the page to see it: the rest
        # of its tokens come at once, so that it completes now rather than seconds later.
        engine.token_delay_s = 0.0
        worker.join()
    assert number(busy, "active") == "1"
    assert int(number(busy, "tokens")) > 0
    assert number(rendered(url), "active") == "0"
