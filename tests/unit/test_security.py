"""Access control: Host and Origin allowlists, API keys, header size — all OpenAI-shaped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import assert_openai_error

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    pool = EnginePool([FakeEngine()])
    await pool.start()
    transport = httpx.ASGITransport(app=create_app(settings, pool))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http
    await pool.drain(timeout=1)


@pytest.fixture
async def open_server() -> AsyncIterator[httpx.AsyncClient]:
    async for http in client_for(Settings()):
        yield http


@pytest.fixture
async def keyed_server() -> AsyncIterator[httpx.AsyncClient]:
    async for http in client_for(
        Settings(api_key="sk-one, sk-two", cors_origins="https://app.example")
    ):
        yield http


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000"])
async def test_loopback_hosts_are_served(open_server: httpx.AsyncClient, host: str) -> None:
    response = await open_server.post("/v1/chat/completions", json=CHAT, headers={"host": host})
    assert response.status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
async def test_foreign_host_is_403(open_server: httpx.AsyncClient, host: str) -> None:
    """DNS rebinding: a page's own name pointed at 127.0.0.1 must not reach the API."""
    response = await open_server.get("/v1/models", headers={"host": host})
    assert_openai_error(response, 403, code="host_not_allowed")


async def test_foreign_origin_is_403_and_no_cors_by_default(open_server: httpx.AsyncClient) -> None:
    response = await open_server.post(
        "/v1/chat/completions", json=CHAT, headers={"origin": "https://evil.example"}
    )
    assert_openai_error(response, 403, code="origin_not_allowed")
    plain = await open_server.get("/v1/models")
    assert "access-control-allow-origin" not in plain.headers


async def test_api_key_required_except_health(keyed_server: httpx.AsyncClient) -> None:
    missing = await keyed_server.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(missing, 401, code="invalid_api_key")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = await keyed_server.get("/v1/models", headers={"authorization": "Bearer sk-nope"})
    assert_openai_error(wrong, 401, code="invalid_api_key")
    for key in ("sk-one", "sk-two"):
        ok = await keyed_server.get("/v1/models", headers={"authorization": f"Bearer {key}"})
        assert ok.status_code == 200
    assert (await keyed_server.get("/health")).status_code == 200
    unknown = await keyed_server.get("/nothing-here")
    assert_openai_error(unknown, 401, code="invalid_api_key")  # no probing routes without a key


async def test_configured_origin_gets_cors_and_preflight(keyed_server: httpx.AsyncClient) -> None:
    origin = {"origin": "https://app.example"}
    preflight = await keyed_server.options(
        "/v1/chat/completions",
        headers={**origin, "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    response = await keyed_server.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={**origin, "authorization": "Bearer sk-one"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    exposed = response.headers["access-control-expose-headers"].lower().split(", ")
    assert {"x-request-id", "request-id", "retry-after"} <= set(exposed)  # the SDKs read them
    # A stored Responses API answer can be deleted from the configured origin too.
    delete = await keyed_server.options(
        "/v1/responses/resp_x", headers={**origin, "access-control-request-method": "DELETE"}
    )
    assert delete.status_code == 200 and "DELETE" in delete.headers["access-control-allow-methods"]


async def test_oversized_headers_are_431(open_server: httpx.AsyncClient) -> None:
    response = await open_server.get("/v1/models", headers={"x-filler": "a" * 40_000})
    assert_openai_error(response, 431, code="headers_too_large")


@pytest.mark.parametrize(
    ("path", "origin", "shape"),
    [
        ("/v1/chat/completions", "https://evil.example", "openai"),
        ("/v1/messages", "https://evil.example", "anthropic"),
        ("/v1/chat/completions", "https://app.example", "openai"),  # a method not allowed
    ],
)
async def test_a_refused_preflight_is_an_error_in_the_routes_shape(
    keyed_server: httpx.AsyncClient, path: str, origin: str, shape: str
) -> None:
    method = "PUT" if origin == "https://app.example" else "POST"
    response = await keyed_server.options(
        path, headers={"origin": origin, "access-control-request-method": method}
    )
    assert response.status_code == 400
    body = response.json()
    if shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith("Disallowed CORS")
    else:
        assert_openai_error(response, 400, code="cors_disallowed")
        assert body["error"]["message"].startswith("Disallowed CORS")
