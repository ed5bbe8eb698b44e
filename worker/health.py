"""The worker's probe endpoints, for Kubernetes.

``/healthz``: the event loop answers (no Redis call, so a Redis outage restarts nothing).
``/readyz``: models loaded and the last heartbeat reached Redis within its TTL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.hostaddr import HostAddress


def create_health_app(is_ready: Callable[[], tuple[bool, str]]) -> Starlette:
    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        ready, reason = is_ready()
        if ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable", "reason": reason}, 503)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz)])


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
