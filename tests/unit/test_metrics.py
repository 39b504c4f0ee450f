"""`GET /metrics`: Prometheus text with request, token, latency and engine series."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine

URL = "/v1/chat/completions"
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


async def samples(http: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_requests_tokens_and_latency_are_counted(http: httpx.AsyncClient) -> None:
    assert (await http.post(URL, json=CHAT)).status_code == 200
    assert (await http.post(URL, json={**CHAT, "stream": True, "n": 2})).status_code == 200
    assert (await http.get("/no/such/route")).status_code == 404
    values = await samples(http)
    route = (("route", "/v1/chat/completions"), ("status", "200"))
    assert values[("mlxd_http_requests_total", route)] == 2
    assert values[("mlxd_http_requests_total", (("route", "other"), ("status", "404")))] == 1
    completion = (("kind", "completion"), ("model", "fake"))
    assert values[("mlxd_tokens_total", completion)] == 3 * len("Hello there!")
    prompt = (("kind", "prompt"), ("model", "fake"))
    assert values[("mlxd_tokens_total", prompt)] == 2 * len("<user>hi")
    assert values[("mlxd_time_to_first_token_seconds_count", (("model", "fake"),))] == 2
    assert values[("mlxd_inter_token_seconds_count", (("model", "fake"),))] == 3 * 11
    assert values[("mlxd_finishes_total", (("model", "fake"), ("reason", "stop")))] == 3
    assert values[("mlxd_engine_active", (("model", "fake"),))] == 0
    assert values[("mlxd_model_loaded", (("model", "fake"),))] == 1
    assert values[("mlxd_model_loaded", (("model", "fake-whisper"),))] == 1
    assert (
        values[("mlxd_mlx_peak_memory_bytes", ())] >= values[("mlxd_mlx_active_memory_bytes", ())]
    )


async def test_every_route_of_the_app_is_its_own_label(http: httpx.AsyncClient) -> None:
    """Routes come from the app itself: audio, model templates and refusals are counted under
    the route they were for, not "other"."""
    assert (await http.get("/v1/models/fake")).status_code == 200
    assert (await http.get("/v1/models/fake-whisper")).status_code == 200
    transcription = await http.post("/v1/audio/transcriptions", data={"model": "fake-whisper"})
    assert transcription.status_code == 400  # no file
    assert (await http.get("/v1/chat/completions")).status_code == 405
    values = await samples(http)
    by_template = (("route", "/v1/models/{model_id:path}"), ("status", "200"))
    assert values[("mlxd_http_requests_total", by_template)] == 2
    audio = (("route", "/v1/audio/transcriptions"), ("status", "400"))
    assert values[("mlxd_http_requests_total", audio)] == 1
    refused = (("route", "/v1/chat/completions"), ("status", "405"))
    assert values[("mlxd_http_requests_total", refused)] == 1


async def test_refusals_before_routing_count_under_their_route() -> None:
    """A 401 from the API-key check never reaches the router; it still counts under the route
    it was for (the app's own paths), and unknown paths stay "other"."""
    app = create_app(Settings(api_key="k"), EnginePool([FakeEngine()]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        assert (await http.post(URL, json=CHAT)).status_code == 401
        assert (await http.post("/v1/nope", json=CHAT)).status_code == 401
        keyed = {"Authorization": "Bearer k"}
        http.headers.update(keyed)
        values = await samples(http)
    refused = (("route", URL), ("status", "401"))
    assert values[("mlxd_http_requests_total", refused)] == 1
    assert values[("mlxd_http_requests_total", (("route", "other"), ("status", "401")))] == 1
