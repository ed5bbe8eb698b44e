"""Redis clients built from settings, the same way on both sides."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.settings import Settings

#: Commands answer within this; blocking reads (keys.BLOCK_MS) stay well below it.
SOCKET_TIMEOUT_S = 10.0


def connect(settings: Settings, *, pubsub: bool = False) -> Redis:
    """A client for ``HERD_REDIS_URL``. A pub/sub client waits for messages indefinitely."""
    if settings.redis_url is None:
        raise RuntimeError("HERD_REDIS_URL is not set")
    client: Redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=None if pubsub else SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=15 if pubsub else 0,
    )
    if settings.redis_password is not None:
        # the setting wins over a password in the URL (it comes from a Secret)
        client.connection_pool.connection_kwargs["password"] = settings.redis_password
    return client
