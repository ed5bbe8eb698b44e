"""``herd api``: serve the API with uvicorn on ``HERD_HOST``."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from shared.settings import Settings


def main(settings: Settings) -> None:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host.host,
        port=settings.host.port,
        log_config=None,
        access_log=False,
        # in-flight streams get this long after SIGTERM (the chart's grace period is longer)
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    uvicorn.Server(config).run()
