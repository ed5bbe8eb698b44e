"""One download of a blob at a time in the whole cluster (workers share one store).

A Redis key per digest, ``SET NX`` with a token and a short expiry that its holder keeps
refreshing: a worker that dies mid-download frees the blob within ``TTL_MS``, and the next
pull resumes from its partial file.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from shared import keys, tasks

TTL_MS = 15_000
REFRESH_S = 5.0

# compare-and-delete / compare-and-extend: only the holder's token touches the key
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)


class BlobLock:
    def __init__(self, redis: Redis, digest: str) -> None:
        self._redis = redis
        self._key = keys.blob_lock(digest)
        self._token = uuid.uuid4().hex

    async def acquire(self) -> bool:
        """Take the lock if nobody holds it."""
        return bool(await self._redis.set(self._key, self._token, nx=True, px=TTL_MS))

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Keep the (acquired) lock alive while the body runs; release it after."""
        refresher = asyncio.create_task(self._refresh())
        try:
            yield
        finally:
            await tasks.stop(refresher)
            with contextlib.suppress(Exception):  # it expires on its own anyway
                await self._redis.eval(_RELEASE, 1, self._key, self._token)  # type: ignore[misc]

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            with contextlib.suppress(Exception):  # a Redis blip: the next refresh may work
                await self._redis.eval(_EXTEND, 1, self._key, self._token, str(TTL_MS))  # type: ignore[misc]
