"""The cluster as the API sees it: live workers and the models they serve, from adverts;
the catalog of every model seen served; each model's queue and replica policy.

Workers' adverts say what exists. Whenever the registry reads them it records each served
model in ``keys.CATALOG_SEEN`` (a write only for a new model or a changed digest), so a
model stays known while no worker that serves it is up: ``herd serve``'s worker starting,
a Redis restart, a rollout. Requests for it queue and wait for a worker until their
deadline (503) instead of getting 404. Should Redis lose the catalog, each API process
writes back what it has seen.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis

from api.cache import Cached
from shared import keys
from shared.errors import InsufficientMemory
from shared.messages import ModelAdvert, ReplicaPolicy, WorkerAdvert
from shared.queues import Queue, adverts_of, policies, queues

log = structlog.get_logger()

#: Adverts are re-read at most this often; a request's model lookup costs no round trip.
CACHE_S = 0.5


def _advert(raw: bytes) -> ModelAdvert | None:
    try:
        return ModelAdvert.model_validate_json(raw)
    except ValidationError:
        log.warning("catalog_entry_invalid")
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


class Registry:
    def __init__(self, client: Redis) -> None:
        self._client = client
        self._adverts: Cached[list[WorkerAdvert]] = Cached(self._read, [], CACHE_S)
        #: What this process knows the catalog holds (it wrote or read it): name -> advert.
        self._seen: dict[str, ModelAdvert] = {}

    async def workers(self, *, fresh: bool = False) -> list[WorkerAdvert]:
        """Workers whose heartbeat is live."""
        return await self._adverts.get(fresh=fresh)

    async def _read(self) -> list[WorkerAdvert]:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(keys.WORKERS_INDEX, time.time(), "+inf")
            pipe.hlen(keys.CATALOG_SEEN)
            ids, n_catalogued = await pipe.execute()
        adverts = await adverts_of(self._client, ids)
        await self._record(adverts, lost=n_catalogued < len(self._seen))
        return adverts

    async def _record(self, adverts: list[WorkerAdvert], *, lost: bool) -> None:
        """Catalog the served models it lacks, or has with a digest no worker serves now;
        everything this process has seen when the catalog lost entries (Redis's data)."""
        served: dict[str, list[ModelAdvert]] = {}
        for worker in adverts:
            if worker.ready:
                for model in worker.models:
                    served.setdefault(model.name, []).append(model)
        new = {} if not lost else dict(self._seen)
        for name, found in served.items():
            known = self._seen.get(name)
            # two workers serving different files under one name must not flip it each read
            if known is None or all(model.digest != known.digest for model in found):
                new[name] = found[0]
        if new:
            mapping = {name: advert.model_dump_json() for name, advert in new.items()}
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hset(keys.CATALOG_SEEN, mapping=mapping)
                await pipe.execute()
            self._seen.update(new)
            log.info("models_catalogued", models=sorted(new))

    async def served(self, *, fresh: bool = False) -> dict[str, ModelAdvert]:
        """Every model a ready worker serves now, by normalised name."""
        found: dict[str, ModelAdvert] = {}
        for worker in await self.workers(fresh=fresh):
            if worker.ready:
                for model in worker.models:
                    found.setdefault(model.name, model)
        return found

    async def models(self, *, fresh: bool = False) -> dict[str, ModelAdvert]:
        """Every model the cluster knows: served now, or served before (the catalog)."""
        served = await self.served(fresh=fresh)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.CATALOG_SEEN)
            (catalog,) = await pipe.execute()
        for name, raw in catalog.items():
            advert = _advert(raw)
            if advert is not None:
                self._seen[name.decode()] = advert
        return {**self._seen, **served}

    async def find(self, name: str) -> ModelAdvert | None:
        """A model the cluster knows. One no worker serves now is re-checked against fresh
        adverts (a worker just came up), then looked up in the catalog."""
        model = (await self.served()).get(name)
        if model is None:
            model = (await self.served(fresh=True)).get(name)
        if model is None:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hget(keys.CATALOG_SEEN, name)
                (raw,) = await pipe.execute()
            model = _advert(raw) if raw is not None else None
            if model is not None:
                self._seen[name] = model
            else:  # lost with Redis's data, if this process saw it (written back soon)
                model = self._seen.get(name)
        return model

    async def check_room(self, name: str) -> None:
        """Raise ``InsufficientMemory`` if every live worker that serves ``name`` says that
        it needs more memory there than the worker lets models fill. A worker that does
        not tell (0) has room; so has a model no worker serves now (it waits for one)."""
        needs: list[int] = []
        totals: list[int] = []
        for worker in await self.workers():
            if not worker.ready:
                continue
            for model in worker.models:
                if model.name != name:
                    continue
                if worker.memory_total <= 0 or model.memory_bytes <= worker.memory_total:
                    return
                needs.append(model.memory_bytes)
                totals.append(worker.memory_total)
        if needs:
            raise InsufficientMemory(
                f"model requires more memory ({_gib(min(needs))}) "
                f"than any worker has ({_gib(max(totals))})"
            )

    async def with_free_slot(self, name: str) -> list[str]:
        """Live workers that have ``name`` loaded with a slot free (as last advertised)."""
        return [
            worker.worker_id
            for worker in await self.workers()
            if any(m.name == name and m.busy < m.slots for m in worker.loaded)
        ]

    async def holders(self, name: str) -> list[str]:
        """Live workers that have ``name`` loaded now."""
        return [
            worker.worker_id
            for worker in await self.workers(fresh=True)
            if any(loaded.name == name for loaded in worker.loaded)
        ]

    async def replicas(self, name: str) -> list[str]:
        """Ready workers (not draining) that have ``name`` loaded or are loading it: those
        that can go on with an answer another worker stopped."""
        return [
            worker.worker_id
            for worker in await self.workers(fresh=True)
            if worker.ready
            and (name in worker.loading or any(m.name == name for m in worker.loaded))
        ]

    async def is_alive(self, worker_id: str) -> bool:
        return bool(await self._client.exists(keys.worker_key(worker_id)))

    async def demand(
        self, models: Iterable[str]
    ) -> tuple[dict[str, Queue], dict[str, ReplicaPolicy]]:
        """Each model's queue, and every replica policy set."""
        return await queues(self._client, models), await policies(self._client)

    async def set_policy(self, name: str, policy: ReplicaPolicy | None) -> None:
        """Set ``name``'s replica policy; None removes it."""
        async with self._client.pipeline(transaction=False) as pipe:
            if policy is None:
                pipe.hdel(keys.POLICIES, name)
            else:
                pipe.hset(keys.POLICIES, name, policy.model_dump_json())
            await pipe.execute()
