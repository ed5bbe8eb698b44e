"""Redis clients built from settings, the same way on both sides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
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


class RedisConfigError(RuntimeError):
    """A Redis setting that cannot be used, such as a password file that cannot be read:
    ``herd`` reports it as one line at start-up."""


def _read_password(path: Path, setting: str) -> str:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise RedisConfigError(f"{setting}: cannot read {path} ({why})") from None
    # a Secret written with `echo` or `--from-file` often ends in a newline; only that goes
    password = text.removesuffix("\n")
    if not password:
        # a Secret that came out empty would surface later as a puzzling NOAUTH
        raise RedisConfigError(f"{setting}: {path} is empty")
    return password


def redis_passwords(settings: Settings) -> tuple[str | None, str | None]:
    """The Redis password and the Sentinels' password. A ``*_FILE`` setting wins over the
    plain one; its file is read on every call, so each new client sees a rotated Secret
    (a client already built keeps the password it read)."""
    password = settings.redis_password
    if settings.redis_password_file is not None:
        password = _read_password(settings.redis_password_file, "HERD_REDIS_PASSWORD_FILE")
    secret = settings.redis_sentinel_password
    sentinel_password = None if secret is None else secret.get_secret_value()
    if settings.redis_sentinel_password_file is not None:
        sentinel_password = _read_password(
            settings.redis_sentinel_password_file, "HERD_REDIS_SENTINEL_PASSWORD_FILE"
        )
    return password, sentinel_password


class _SentinelMaster(Redis):
    """The master's client; closing it closes its Sentinel clients too (they are the
    pool's, and nothing else would close them)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if close_connection_pool or (
            close_connection_pool is None and self.auto_close_connection_pool
        ):
            pool = cast(SentinelConnectionPool, self.connection_pool)
            for sentinel in cast(Sentinel, pool.sentinel_manager).sentinels:
                await sentinel.aclose()


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """HERD_REDIS_SENTINELS as (host, port) pairs (``[::1]:26379``: brackets dropped)."""
    pairs = []
    for address in settings.redis_sentinels:
        host, _, port = address.rpartition(":")
        pairs.append((host.removeprefix("[").removesuffix("]"), int(port)))
    return pairs


def connect(settings: Settings, *, pubsub: bool = False) -> Redis:
    """A client for the master the Sentinels name (``HERD_REDIS_SENTINELS``), else for
    ``HERD_REDIS_URL``. A pub/sub client waits for messages indefinitely. Raises
    RedisConfigError if a password file cannot be read."""
    password, sentinel_password = redis_passwords(settings)
    options: dict[str, Any] = {
        "socket_timeout": None if pubsub else SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        # a Sentinel-managed connection retries the same way: each retry reconnects, and a
        # reconnect asks the Sentinels where the master is now (it follows a failover)
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.01), RETRIES),
        "retry_on_error": [ConnectionError, TimeoutError, OSError],
        "health_check_interval": 15 if pubsub else 0,
    }
    if settings.redis_sentinels:
        sentinels = Sentinel(  # type: ignore[no-untyped-call]
            sentinel_addresses(settings),
            # a Sentinel that does not answer soon is skipped for the next one
            sentinel_kwargs={
                "socket_timeout": CONNECT_TIMEOUT_S,
                "socket_connect_timeout": CONNECT_TIMEOUT_S,
                "password": sentinel_password,
            },
        )
        return cast(
            Redis,
            sentinels.master_for(
                settings.redis_sentinel_master,
                redis_class=_SentinelMaster,
                password=password,
                **options,
            ),
        )
    if settings.redis_url is None:
        raise RuntimeError("neither HERD_REDIS_URL nor HERD_REDIS_SENTINELS is set")
    client: Redis = Redis.from_url(settings.redis_url, **options)
    if password is not None:
        # the setting wins over a password in the URL (it comes from a Secret)
        client.connection_pool.connection_kwargs["password"] = password
    return client
