"""Prometheus metrics at `GET /metrics` (prometheus-client, one registry per app).

- HTTP: requests by route and status. The route label is the app's own route template (so
  `/v1/models/{model_id:path}` counts every model id once); paths that match no route are
  "other", so a client cannot blow up the label set.
- Generation: prompt/completion/cached tokens, time to first token and gaps between tokens as
  the server hands them to the client, finish reasons.
- Engines: active and queued requests, largest batch, prefix-cache hits/misses/bytes, failed
  steps, weights' memory, loaded or not, why one cannot serve (a lost distributed group) — read
  from each engine's stats when scraped; MLX's allocator (active, peak and cached bytes).

Invariant: observing never changes a stream: `Observed` passes every event through unchanged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engines.bridge import RequestStream
from engines.pool import EnginePool
from engines.types import EngineStats, Event, FinishEvent, TokenEvent

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _EngineCollector(Collector):
    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        fields = {
            "active": "Choices accepted and not finished",
            "queued": "Requests waiting for admission",
            "largest_batch": "Most rows decoded together so far",
            "prefix_cache_hits": "Prompts that reused a cached prefix",
            "prefix_cache_misses": "Prompts that found no cached prefix",
            "prefix_cache_bytes": "Bytes held by the prefix cache",
            "failures": "Engine steps that raised",
            "weights_bytes": "Memory the model's parameters take",
            "drafted_tokens": "Speculative decoding: tokens drafted",
            "accepted_drafts": "Speculative decoding: drafted tokens the model kept",
        }
        stats = self.pool.stats()
        for field, help_text in fields.items():
            family = GaugeMetricFamily(f"mlxd_engine_{field}", help_text, labels=["model"])
            for name, engine in stats.items():
                family.add_metric([name], float(getattr(engine, field)))
            yield family
        yield from _speculation(stats)
        fault = GaugeMetricFamily(
            "mlxd_engine_fault",
            "1 while an engine cannot serve, with why",
            labels=["model", "reason"],
        )
        for name, engine in stats.items():
            if engine.fault:
                fault.add_metric([name, engine.fault], 1.0)
        yield fault
        loaded = GaugeMetricFamily(
            "mlxd_model_loaded", "1 while a model is loaded", labels=["model"]
        )
        for model in self.pool.models():
            loaded.add_metric([model.name], 1.0 if model.loaded else 0.0)
        yield loaded
        yield from _mlx_memory()


def _speculation(stats: dict[str, EngineStats]) -> Iterator[Metric]:
    """Drafts kept per draft, and tokens per row per decode pass (1 without speculation)."""
    acceptance = GaugeMetricFamily(
        "mlxd_engine_speculative_acceptance_ratio",
        "Drafted tokens kept / drafted",
        labels=["model"],
    )
    per_step = GaugeMetricFamily(
        "mlxd_engine_tokens_per_step", "Tokens a row gains per decode pass", labels=["model"]
    )
    for name, engine in stats.items():
        if engine.drafted_tokens:
            acceptance.add_metric([name], engine.accepted_drafts / engine.drafted_tokens)
        if engine.decode_row_steps:
            per_step.add_metric([name], engine.tokens_generated / engine.decode_row_steps)
    yield acceptance
    yield per_step


def _mlx_memory() -> Iterator[Metric]:
    """MLX's allocator, process-wide: memory in use by arrays, its peak, and its buffer cache."""
    import mlx.core as mx

    for name, read, help_text in (
        ("active", mx.get_active_memory, "Bytes held by MLX arrays"),
        ("peak", mx.get_peak_memory, "Most bytes MLX arrays held at once"),
        ("cache", mx.get_cache_memory, "Bytes MLX keeps cached for reuse"),
    ):
        yield GaugeMetricFamily(f"mlxd_mlx_{name}_memory_bytes", help_text, value=float(read()))


class Metrics:
    def __init__(self, pool: EnginePool) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlxd_http_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.tokens = Counter(
            "mlxd_tokens", "Tokens by kind", ["model", "kind"], registry=self.registry
        )
        self.finishes = Counter(
            "mlxd_finishes", "Choices ended, by reason", ["model", "reason"], registry=self.registry
        )
        self.ttft = Histogram(
            "mlxd_time_to_first_token_seconds",
            "From request accepted to its first output handed to the client (once per request)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "mlxd_inter_token_seconds",
            "Gaps between a choice's outputs handed to the client (per token when several come "
            "at once)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(pool))
        self.routes: frozenset[str] = frozenset()  # the app's paths (set once routes are added)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, stream: RequestStream, model: str) -> Observed:
        return Observed(stream, model, self)


class Observed:
    """A RequestStream seen through the metrics: same events, same cancel and fail."""

    def __init__(self, stream: RequestStream, model: str, metrics: Metrics) -> None:
        self._stream = stream
        self._model = model
        self._metrics = metrics
        self._start = time.monotonic()
        self._first_seen = False
        self.first_token_at: float | None = None  # time.monotonic() of the first token
        self._last: dict[int, float] = {}  # per choice: when its previous output was handed over
        # Labelled once per stream, not per token (`labels()` takes a lock and a dict lookup);
        # on the first token, so a stream that yields none adds no series.
        self._inter_token: Any = None

    def cancel(self) -> None:
        self._stream.cancel()

    def fail(self, error: Exception) -> None:
        self._stream.fail(error)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def events(self, min_interval_s: float = 0.0) -> AsyncIterator[Event]:
        async for event in self._stream.events(min_interval_s):
            self._record(event)
            yield event

    def _record(self, event: Event) -> None:
        metrics, model = self._metrics, self._model
        if isinstance(event, TokenEvent) and event.token_ids:
            now = time.monotonic()
            if not self._first_seen:  # time to first token: once per request
                self._first_seen = True
                self.first_token_at = now
                metrics.ttft.labels(model).observe(now - self._start)
                self._inter_token = metrics.inter_token.labels(model)
            previous = self._last.get(event.index)
            # Tokens handed over together share the gap since the previous hand-over; in a
            # choice's first hand-over there is none, so they arrived 0 s apart. Either way a
            # choice of n tokens records n − 1 gaps, however the tokens were grouped.
            if previous is not None:
                gaps = [(now - previous) / len(event.token_ids)] * len(event.token_ids)
            else:
                gaps = [0.0] * (len(event.token_ids) - 1)
            for gap in gaps:
                self._inter_token.observe(gap)
            self._last[event.index] = now
        elif isinstance(event, FinishEvent):
            usage = event.usage
            if event.index == 0:  # the prompt is shared by all choices of a request
                metrics.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
                metrics.tokens.labels(model, "cached").inc(usage.cached_tokens)
            metrics.tokens.labels(model, "completion").inc(usage.completion_tokens)
            metrics.finishes.labels(model, event.reason).inc()


class RequestCounter:
    """Pure ASGI middleware counting responses by route and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(self._route(scope), str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)

    def _route(self, scope: Scope) -> str:
        """The matched route's template; for requests refused before routing (403, 401…), the
        path when it is one of the app's routes; else "other"."""
        matched = scope.get("route")
        if matched is not None and hasattr(matched, "path"):
            return str(matched.path)
        return scope["path"] if scope["path"] in self.metrics.routes else "other"
