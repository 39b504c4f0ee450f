"""HEAD on GET routes (server/head.py): the GET's status and headers, no body; and paths with a
trailing slash (server/trailing_slash.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import URL, assert_openai_error, chat_body


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/metrics", "/status"])
async def test_head_answers_as_get_without_a_body(http: httpx.AsyncClient, path: str) -> None:
    get = await http.get(path)
    head = await http.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if "content-length" in get.headers and path != "/metrics":  # metrics move between calls
        assert head.headers["content-length"] == get.headers["content-length"]


async def test_head_of_an_unknown_model_is_the_get_404(http: httpx.AsyncClient) -> None:
    get = await http.get("/v1/models/nope")
    head = await http.head("/v1/models/nope")
    assert head.status_code == get.status_code == 404
    assert head.content == b""


async def test_head_of_a_post_only_route_is_405(http: httpx.AsyncClient) -> None:
    response = await http.head(URL)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert_openai_error(await http.get(URL), 405, code="method_not_allowed")


async def test_a_trailing_slash_is_served_by_the_route(http: httpx.AsyncClient) -> None:
    """Not a 307 with an empty body (what Starlette answers), nor model '' for /v1/models/."""
    response = await http.post(URL + "/", json=chat_body())
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    listed = await http.get("/v1/models//")
    assert listed.status_code == 200
    assert listed.json() == (await http.get("/v1/models")).json()
    assert (await http.get("/health/?x=1")).status_code == 200
