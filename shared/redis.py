"""Redis clients built from settings, the same way on both sides."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from shared.settings import Settings

#: Commands answer within this; blocking reads (keys.BLOCK_MS) stay well below it.
SOCKET_TIMEOUT_S = 10.0
#: A connection that cannot be made within this fails (Redis down: requests get a 503).
CONNECT_TIMEOUT_S = 2.0
#: A command that meets a dropped connection is retried this many times, with backoff
#: (10 ms doubling, at most 0.5 s): a Redis restart costs a pause, not an error, while
#: a Redis that stays down answers within about CONNECT_TIMEOUT_S x (RETRIES + 1).
RETRIES = 2


def connect(settings: Settings, *, pubsub: bool = False) -> Redis:
    """A client for ``HERD_REDIS_URL``. A pub/sub client waits for messages indefinitely."""
    if settings.redis_url is None:
        raise RuntimeError("HERD_REDIS_URL is not set")
    client: Redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=None if pubsub else SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), RETRIES),
        retry_on_error=[ConnectionError, TimeoutError, OSError],
        health_check_interval=15 if pubsub else 0,
    )
    if settings.redis_password is not None:
        # the setting wins over a password in the URL (it comes from a Secret)
        client.connection_pool.connection_kwargs["password"] = settings.redis_password
    return client
