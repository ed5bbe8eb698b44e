"""A worker's advert: written every interval with a TTL, so a dead worker disappears."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

from redis.asyncio import Redis

from shared import keys
from shared.messages import DeviceInfo, ModelAdvert, WorkerAdvert
from shared.version import VERSION


class Advertiser:
    def __init__(self, client: Redis, worker_id: str, engine: str, ttl_s: float) -> None:
        self._client = client
        self._worker_id = worker_id
        self._engine = engine
        self._ttl_s = ttl_s
        self._started_at = datetime.now(UTC).isoformat()
        #: monotonic time of the last advert Redis accepted
        self.last_beat = float("-inf")

    def advert(
        self, devices: list[DeviceInfo], models: list[ModelAdvert], total: int, free: int
    ) -> WorkerAdvert:
        return WorkerAdvert(
            worker_id=self._worker_id,
            host=socket.gethostname(),
            version=VERSION,
            engine=self._engine,
            devices=devices,
            models=models,
            slots_total=total,
            slots_free=free,
            ready=True,
            started_at=self._started_at,
        )

    async def beat(self, advert: WorkerAdvert) -> None:
        now = time.time()
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(
                keys.worker_key(self._worker_id),
                advert.model_dump_json(),
                px=int(self._ttl_s * 1000),
            )
            pipe.zadd(keys.WORKERS_INDEX, {self._worker_id: now + self._ttl_s})
            pipe.zremrangebyscore(keys.WORKERS_INDEX, "-inf", now)
            await pipe.execute()
        self.last_beat = time.monotonic()

    def is_live(self) -> bool:
        return time.monotonic() - self.last_beat < self._ttl_s

    async def withdraw(self) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.delete(keys.worker_key(self._worker_id))
            pipe.zrem(keys.WORKERS_INDEX, self._worker_id)
            await pipe.execute()
        self.last_beat = float("-inf")
