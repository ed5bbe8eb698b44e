"""The ``herd`` command: ``serve`` (everything on one machine), ``api``, ``worker``."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import structlog

from shared.embedded import EmbeddedRedis
from shared.logging import configure_logging
from shared.settings import Settings

log = structlog.get_logger()


def _serve(settings: Settings) -> int:
    """Embedded Redis (unless HERD_REDIS_URL is set), one API and one worker, as children."""
    redis: EmbeddedRedis | None = None
    env = dict(os.environ)
    if settings.redis_url is None:
        redis = EmbeddedRedis()
        redis.start()
        env["HERD_REDIS_URL"] = redis.url
        log.info("embedded_redis_started", url=redis.url)
    children = [
        subprocess.Popen([sys.executable, "-m", "shared.cli", role], env=env)
        for role in ("worker", "api")
    ]
    log.info("herd_serving", url=settings.host.url)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
        forward(signal.SIGTERM, None)  # one died: stop the other too
        deadline = time.monotonic() + settings.shutdown_grace_s + 5
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    finally:
        if redis is not None:
            redis.stop()
    # a child stopped by our SIGTERM exits 0 (worker) or negative; report real failures
    return max([0, *(child.returncode or 0 for child in children)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herd", description=__doc__)
    parser.add_argument("command", choices=["serve", "api", "worker"])
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "serve":
        return _serve(settings)
    if settings.redis_url is None:
        parser.error("HERD_REDIS_URL must be set for `herd api` and `herd worker`")
    if args.command == "api":
        from api.main import main as api_main

        api_main(settings)
    else:
        from worker.main import main as worker_main

        worker_main(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
