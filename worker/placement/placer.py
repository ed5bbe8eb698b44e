"""A worker's share of placement: every tick it reads the cluster (adverts, queues,
policies, tickets), runs ``plan`` and starts the load the plan names it for, if it wins
that model's ticket. No worker decides for another; there is no leader to lose."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import tasks
from shared.messages import WorkerAdvert
from shared.queues import live_workers, policies, queues
from shared.settings import Settings
from worker.placement.plan import Demand, Load, Node, Params, Plan, Replica, plan
from worker.placement.tickets import Tickets
from worker.residency import Residency

log = structlog.get_logger()

#: Placement looks at the queues at least this often (a cold model waits at most this
#: long before its load starts).
MAX_TICK_S = 0.5


def node_of(advert: WorkerAdvert) -> Node:
    """Another worker, as its advert describes it."""
    servable = {m.name: m.memory_bytes for m in advert.models}
    replicas = {
        m.name: Replica(
            m.busy,
            servable.get(m.name) or m.size_bytes,
            idle_s=m.idle_s,
            expires_in_s=_seconds_until(m.expires_at),
            slots=m.slots,
        )
        for m in advert.loaded
    }
    return Node(
        id=advert.worker_id,
        memory_total=advert.memory_total,
        memory_free=advert.memory_free,
        servable=servable,
        replicas=replicas,
        loading=set(advert.loading),
        max_loaded=advert.max_loaded,
    )


def _seconds_until(stamp: str) -> float:
    try:
        return datetime.fromisoformat(stamp).timestamp() - time.time()
    except ValueError:
        return math.inf


class Placer:
    def __init__(
        self,
        client: Redis,
        settings: Settings,
        models: Collection[str],
        residency: Residency,
        local: Callable[[], Node],
        fetch: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self._id = settings.worker_id
        self._settings = settings
        #: Kept as given: the worker's live view, which a store rescan changes.
        self._models = models
        self._residency = residency
        self._local = local
        #: Brings a model this worker may serve but lacks into its own store (a no-op
        #: for a model it has): the worker's, where its store is not shared.
        self._fetch = fetch
        self._tickets = Tickets(client, self._id)
        # a cold model may take a busy model's place once it waited twice what makes a
        # hot model ask for a replica
        self._params = Params(
            scale_out_wait_s=settings.scale_out_wait_s, starve_s=2 * settings.scale_out_wait_s
        )
        #: Models this worker loaded whose ticket it keeps for the cooldown, and until
        #: when (monotonic): the ticket goes as soon as the copy does (unloaded at
        #: keep_alive 0, evicted), or the model's next request would wait the cooldown out.
        self._cooling: dict[str, float] = {}
        #: Set to look again at once (a model went, a job finished).
        self.wake = asyncio.Event()
        self.last: Plan | None = None

    async def run(self) -> None:
        interval = min(self._settings.heartbeat_interval_s, MAX_TICK_S)
        while True:
            try:
                await self.tick()
            except (RedisError, OSError) as exc:
                log.warning("placement_failed", error=str(exc))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # comes as the wake-up does, and then the worker never stops
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self.wake.wait()
            self.wake.clear()

    async def tick(self) -> Plan:
        await self._release_gone()
        adverts = await live_workers(self._client)
        queued = await queues(self._client, self._models)
        wanted = {m: p for m, p in (await policies(self._client)).items() if m in self._models}
        held = await self._tickets.held({*queued, *wanted})
        nodes = [node_of(a) for a in adverts if a.ready and a.worker_id != self._id]
        nodes.append(self._local())  # our own state fresh, not as last advertised
        demand = {m: Demand(q.waiting, q.oldest_wait_s) for m, q in queued.items()}
        result = plan(nodes, demand, wanted, held, self._params)
        self.last = result
        self._residency.keep(result.kept.get(self._id, set()))
        for model in result.unplaceable:
            log.warning("model_fits_nowhere", model=model)
        for load in result.for_worker(self._id):
            allowed = held.get(load.model, 0) + len(result.for_model(load.model))
            await self._load(load, allowed)
        return result

    async def _load(self, load: Load, allowed: int) -> None:
        # the ticket outlives a heartbeat's silence: a dead loader's expires with its advert
        ttl = self._settings.heartbeat_ttl_s
        if not await self._tickets.take(load.model, allowed, ttl):
            return  # the loads planned are under way elsewhere
        log.info("placement_load", model=load.model, reason=load.reason, evict=load.evict)
        refresh = asyncio.create_task(self._hold(load.model, ttl))
        # kept a while after a load, or a failed one (one replica at a time, and a broken
        # file is not retried at every tick); given up at once if there was no room
        cooldown = self._settings.scale_cooldown_s
        try:
            if self._fetch is not None:
                await self._fetch(load.model)  # a failure counts as a failed load
            if await self._residency.place(load.model, load.evict):
                self._cooling[load.model] = time.monotonic() + cooldown
            else:
                cooldown = 0.0
        except Exception:  # a model that fails to load must not stop placement
            log.exception("placement_load_failed", model=load.model)
        finally:
            await tasks.stop(refresh)
            await self._tickets.extend(load.model, cooldown)

    async def _release_gone(self) -> None:
        """Give up the cooling tickets of the copies no longer here: the cooldown lets the
        next scale-out see what a replica took, and a replica gone took nothing. (A failed
        load's ticket stays: a broken file is not retried at every tick.)"""
        now = time.monotonic()
        here = {*self._residency.resident(), *self._residency.loading}
        for model, until in list(self._cooling.items()):
            if until <= now:
                del self._cooling[model]  # expired on its own
            elif model not in here:
                await self._tickets.extend(model, 0)
                del self._cooling[model]

    async def _hold(self, model: str, ttl: float) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            with contextlib.suppress(RedisError, OSError):
                await self._tickets.extend(model, ttl)
