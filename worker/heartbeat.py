"""A worker's advert: written every interval with a TTL, so a dead worker disappears.

The full GGUF metadata of each model (for /api/show ``verbose``) is large and never
changes, so it is written once per model to ``keys.model_info(digest)``, not in the advert.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from shared import keys
from shared.messages import DeviceInfo, LoadedModel, ModelAdvert, WorkerAdvert
from shared.version import VERSION

log = structlog.get_logger()

#: ``engine.full_model_info``: a model's whole GGUF metadata (engines may not offer it).
ModelInfoSource = Callable[[str], dict[str, Any]]


class Advertiser:
    def __init__(self, client: Redis, worker_id: str, engine: str, ttl_s: float) -> None:
        self._client = client
        self._worker_id = worker_id
        self._engine = engine
        self._ttl_s = ttl_s
        self._started_at = datetime.now(UTC).isoformat()
        #: monotonic time of the last advert Redis accepted
        self.last_beat = float("-inf")
        self._info_written: set[str] = set()

    def advert(
        self,
        devices: list[DeviceInfo],
        models: list[ModelAdvert],
        total: int,
        free: int,
        loaded: list[LoadedModel] | None = None,
        *,
        ready: bool = True,
    ) -> WorkerAdvert:
        """``ready``: False while draining (placement and routing look elsewhere)."""
        return WorkerAdvert(
            worker_id=self._worker_id,
            host=socket.gethostname(),
            version=VERSION,
            engine=self._engine,
            devices=devices,
            models=models,
            loaded=loaded or [],
            slots_total=total,
            slots_free=free,
            ready=ready,
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

    async def write_model_info(
        self, models: list[ModelAdvert], source: ModelInfoSource | None
    ) -> None:
        """Write the full metadata of each model not written yet by this process."""
        if source is None:
            return
        for model in models:
            if not model.digest or model.digest in self._info_written:
                continue
            try:
                info = await asyncio.to_thread(source, model.name)
                data = orjson.dumps(info, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
            except Exception:  # an unreadable file must not stop the heartbeat
                log.exception("model_info_failed", model=model.name)
                self._info_written.add(model.digest)
                continue
            await self._client.set(keys.model_info(model.digest), data)
            self._info_written.add(model.digest)
