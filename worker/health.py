"""The worker's probe endpoints, for Kubernetes.

``/healthz``: the event loop answers (no Redis call, so a Redis outage restarts nothing).
``/readyz``: models loaded and the last heartbeat reached Redis within its TTL.
``/metrics``: the worker's Prometheus metrics (``worker.metrics``), when given them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.hostaddr import HostAddress
from worker.metrics import CONTENT_TYPE, WorkerMetrics


def create_health_app(
    is_ready: Callable[[], tuple[bool, str]], metrics: WorkerMetrics | None = None
) -> Starlette:
    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        ready, reason = is_ready()
        if ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable", "reason": reason}, 503)

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if metrics is not None:
        exposed = metrics

        async def scrape(_: Request) -> Response:
            return Response(exposed.render(), media_type=CONTENT_TYPE)

        routes.append(Route("/metrics", scrape))
    return Starlette(routes=routes)


class _Server(uvicorn.Server):
    # the worker owns SIGTERM/SIGINT (it drains); the probe server must not take them
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_server(app: Starlette, address: HostAddress) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=address.host,
        port=address.port,
        log_config=None,
        lifespan="off",
        access_log=False,
    )
    return _Server(config)
