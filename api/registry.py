"""The cluster as the API sees it: live workers and the models they serve, from adverts."""

from __future__ import annotations

import time

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis

from shared import keys
from shared.messages import ModelAdvert, WorkerAdvert

log = structlog.get_logger()

#: Adverts are re-read at most this often; a request's model lookup costs no round trip.
CACHE_S = 0.5


class Registry:
    def __init__(self, client: Redis) -> None:
        self._client = client
        self._cached: list[WorkerAdvert] = []
        self._cached_at = float("-inf")

    async def workers(self, *, fresh: bool = False) -> list[WorkerAdvert]:
        """Workers whose heartbeat is live."""
        now = time.monotonic()
        if not fresh and now - self._cached_at < CACHE_S:
            return self._cached
        ids = await self._client.zrangebyscore(keys.WORKERS_INDEX, time.time(), "+inf")
        adverts: list[WorkerAdvert] = []
        if ids:
            raws = await self._client.mget([keys.worker_key(i.decode()) for i in ids])
            for raw in raws:
                if raw is None:  # expired between the two reads
                    continue
                try:
                    adverts.append(WorkerAdvert.model_validate_json(raw))
                except ValidationError:
                    log.warning("worker_advert_invalid")
        self._cached, self._cached_at = adverts, now
        return adverts

    async def models(self, *, fresh: bool = False) -> dict[str, ModelAdvert]:
        """Every model a ready worker serves, by normalised name."""
        found: dict[str, ModelAdvert] = {}
        for worker in await self.workers(fresh=fresh):
            if worker.ready:
                for model in worker.models:
                    found.setdefault(model.name, model)
        return found

    async def find(self, name: str) -> ModelAdvert | None:
        """A served model; a miss is checked against fresh adverts (a worker just came up)."""
        model = (await self.models()).get(name)
        if model is None:
            model = (await self.models(fresh=True)).get(name)
        return model

    async def holders(self, name: str) -> list[str]:
        """Live workers that have ``name`` loaded now."""
        return [
            worker.worker_id
            for worker in await self.workers(fresh=True)
            if any(loaded.name == name for loaded in worker.loaded)
        ]

    async def is_alive(self, worker_id: str) -> bool:
        return bool(await self._client.exists(keys.worker_key(worker_id)))
