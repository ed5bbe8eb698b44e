"""The API's app factory. The lifespan owns every resource and closes them in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import http
from api.aliases import Aliases
from api.dispatch import Dispatcher
from api.errors import install_error_handlers
from api.metrics import ApiMetrics, RequestMetrics
from api.metrics import router as metrics_router
from api.registry import Registry
from api.routes import (
    blobs,
    cluster,
    create,
    dlq,
    health,
    inference,
    models,
    openai,
    pull,
    push,
    status,
)
from api.state import AppState
from api.tokens import TokenRouter
from shared.redis import connect
from shared.settings import Settings
from shared.version import VERSION


def create_app(settings: Settings) -> FastAPI:
    metrics = ApiMetrics()  # this app's own registry (api.metrics says why)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = connect(settings)
        pubsub_client = connect(settings, pubsub=True)
        router = TokenRouter(pubsub_client)
        await router.start()
        registry = Registry(client)
        app.state.herd = AppState(
            settings=settings,
            redis=client,
            registry=registry,
            dispatcher=Dispatcher(
                client,
                router,
                registry,
                max_queue=settings.max_queue,
                check_interval_s=settings.heartbeat_interval_s,
                prefix_routing=settings.prefix_routing,
                metrics=metrics,
            ),
            aliases=Aliases(client, registry),
        )
        try:
            yield
        finally:
            await router.stop()
            await pubsub_client.aclose()
            await client.aclose()

    app = FastAPI(
        title="Herd",
        version=VERSION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    http.install(app, settings)
    # outermost: every answer counts, the other middlewares' refusals too (route "other")
    app.add_middleware(RequestMetrics, metrics=metrics)
    for module in (health, models, inference, openai, cluster, dlq, pull):
        app.include_router(module.router)
    # the model store's own writes (api.modelstore): blob uploads and creates; and pushes,
    # which read it
    for module in (blobs, create, push):
        app.include_router(module.router)
    # the status page: open with API keys configured (api.auth.EXEMPT), its polls are not
    app.include_router(status.router)
    # not an Ollama route; open with API keys configured (api.auth.EXEMPT)
    app.include_router(metrics_router)
    return app
