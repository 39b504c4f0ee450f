"""The real server on the embedded SmolLM2 model, over a real socket, for the strict SDK.

The model must be in the store (`make install` imports it); its absence is a failure, not a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from openai import OpenAI

from engines.pool import EnginePool
from engines.weights.embedded import SMOLLM2
from engines.weights.store import ModelStore
from server.app import create_app
from server.settings import Settings
from tests.servers import serve

_OPEN_CLIENTS: list[OpenAI] = []


def sdk_client(url: str, **kwargs: object) -> OpenAI:
    """The official SDK in strict mode against `url`; closed after the test that made it."""
    options: dict[str, object] = {"_strict_response_validation": True, "max_retries": 0}
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", **{**options, **kwargs})  # type: ignore[arg-type]
    _OPEN_CLIENTS.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    """An unclosed client's sockets would be reported (ResourceWarning, an error here) in
    whichever later test the garbage collector happens to run."""
    yield
    while _OPEN_CLIENTS:
        _OPEN_CLIENTS.pop().close()


@dataclass
class LiveServer:
    url: str
    pool: EnginePool

    def client(self, **kwargs: object) -> OpenAI:
        return sdk_client(self.url, **kwargs)


@pytest.fixture(scope="session")
def live() -> Iterator[LiveServer]:
    settings = Settings()
    if not ModelStore(settings.home).has(SMOLLM2.name):
        pytest.fail(f"{SMOLLM2.name} is not in {settings.home}; run `make install` first")
    app = create_app(settings)
    with serve(app) as url:
        yield LiveServer(url, app.state.pool)
