"""Typed FastAPI dependencies: what a route may take from the app, and its validated body.

Routes declare `settings: SettingsDep`, `pool: PoolDep`, `metrics: MetricsDep` (and the
Responses API its `store: ResponseStoreDep`, Ollama's `/api/pull` and `/api/delete` their
`pulls: HubPullsDep`) instead of reading untyped `request.app.state`
attributes, and take their JSON body through `json_body`, which reads it within the size limit
and validates it (every failure a 4xx in the route's shape, raised before the route's own code
runs).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel

from engines.pool import EnginePool
from server.body import read_json_object, validate
from server.drain import Drain
from server.hub_pulls import HubPulls
from server.metrics import Metrics
from server.response_store import ResponseStore
from server.settings import Settings

M = TypeVar("M", bound=BaseModel)


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def app_pool(request: Request) -> EnginePool:
    pool: EnginePool = request.app.state.pool
    return pool


def app_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


def app_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def app_hub_pulls(request: Request) -> HubPulls:
    pulls: HubPulls = request.app.state.hub_pulls
    return pulls


def app_response_store(request: Request) -> ResponseStore:
    """The Responses API's store under MLXD_HOME, opened on first use."""
    state = request.app.state
    if getattr(state, "response_store", None) is None:
        state.response_store = ResponseStore(state.settings.home / "responses.sqlite3")
    store: ResponseStore = state.response_store
    return store


SettingsDep = Annotated[Settings, Depends(app_settings)]
PoolDep = Annotated[EnginePool, Depends(app_pool)]
MetricsDep = Annotated[Metrics, Depends(app_metrics)]
ResponseStoreDep = Annotated[ResponseStore, Depends(app_response_store)]
HubPullsDep = Annotated[HubPulls, Depends(app_hub_pulls)]


@dataclass(frozen=True)
class Body(Generic[M]):
    """A request body as sent (`raw`, for the ignored-fields header) and validated (`value`)."""

    raw: dict[str, Any]
    value: M


def json_body(schema: type[M]) -> Callable[[Request, Settings], Awaitable[Body[M]]]:
    """A dependency reading the body as a JSON object of `schema`."""

    async def read(request: Request, settings: SettingsDep) -> Body[M]:
        raw = await read_json_object(request, settings.max_body_bytes)
        return Body(raw, validate(schema, raw))

    return read
