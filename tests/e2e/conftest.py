"""The real server on the embedded SmolLM2 model, over a real socket, for the strict SDK.

The model must be in the store (`make install` imports it); its absence is a failure, not a skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engines.weights.embedded import SMOLLM2
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
