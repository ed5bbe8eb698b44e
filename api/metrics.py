"""The API process's Prometheus metrics, served at ``GET /metrics`` (text format).

The names and labels are part of Herd's interface (dashboards and alerts use them); see
docs/operations.md, "Metrics". Every label value is bounded: a route is the matched route's
template (``/api/chat``, ``/api/blobs/{digest}``; ``other`` for a path no route matched,
never the raw path), a status an HTTP status code, and a model only ever a model the
cluster knows: the relay (``api.dispatch``) runs only for resolved models, and the queue
depths are read for the registry's models. A request id or a prompt is never a label.

Each app has a ``CollectorRegistry`` of its own rather than prometheus-client's global
default: a process runs one app, but the tests run several APIs in one process, and two
registrations of one name in one registry fail (and would mix their counts).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.state import StateDep
from shared.queues import queues

#: Whole requests, a stream to its last chunk: 5 ms (/api/version) to 10 minutes (a long
#: answer from a slow model on CPU).
REQUEST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: The first token: a warm model answers in tens of ms, a queued one or a cold load in
#: seconds to minutes. Also the queue wait's.
FIRST_TOKEN_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
#: Between two chunks: 1 ms (tokens batched, a fast GPU) to seconds (a stalled worker).
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1)

#: The route label of a request no route matched (never the raw path: unbounded).
OTHER = "other"


class ApiMetrics:
    """One API app's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "herd_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.request_duration = Histogram(
            "herd_request_duration_seconds",
            "HTTP requests' duration, a streamed answer to its last chunk",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "herd_time_to_first_token_seconds",
            "From a job's submission to its first token chunk",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "herd_inter_token_latency_seconds",
            "Between consecutive token chunks of one answer",
            ["model"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "herd_queue_wait_seconds",
            "From a job's submission to its worker's started event (queue wait and load)",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.continuation_gap = Histogram(
            "herd_continuation_gap_seconds",
            "The pause a client saw where another worker went on with its answer "
            "(its worker drained or died): the last chunk before to the first after",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "herd_queue_depth",
            "Jobs waiting in a model's queue (no worker has taken them), as of the scrape",
            ["model"],
            registry=r,
        )
        self.active_streams = Gauge(
            "herd_active_streams",
            "Jobs this process is relaying the events of now (queued or answering)",
            registry=r,
        )

    async def refresh_queue_depth(self, client: Redis, models: Iterable[str]) -> None:
        """Set ``herd_queue_depth`` for ``models`` (the registry's), dropping others."""
        found = await queues(client, models)
        self.queue_depth.clear()
        for model, queue in found.items():
            self.queue_depth.labels(model).set(queue.waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: ``herd_requests_total`` and ``herd_request_duration_seconds`` by
    the matched route's template (read from the scope after routing) and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or OTHER
            self._metrics.requests.labels(route, str(status[0])).inc()
            self._metrics.request_duration.labels(route).observe(time.perf_counter() - started)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, state: StateDep) -> Response:
    """Prometheus's text format; the queue depths are read from Redis now."""
    api_metrics: ApiMetrics = request.app.state.metrics
    try:
        models = await state.registry.models()
        await api_metrics.refresh_queue_depth(state.redis, models)
    except (RedisError, OSError):
        api_metrics.queue_depth.clear()  # Redis down: no depths rather than stale ones
    return Response(api_metrics.render(), media_type=CONTENT_TYPE_LATEST)
