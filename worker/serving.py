"""Which models a worker serves: what its model store holds (rescanned when a writer bumps
``keys.STORE_VERSION``), and models pulled into another worker's store that it may pull
into its own when placement has it load one (``fetch``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys
from shared.messages import LoadOptions, ModelAdvert
from shared.queues import live_workers
from shared.settings import Settings
from worker import pulls
from worker.engine import Engine
from worker.model_files import served_files
from worker.residency import Residency

log = structlog.get_logger()


class StoreServing:
    def __init__(
        self,
        settings: Settings,
        client: Redis,
        engine: Engine,
        residency: Residency,
        stopping: asyncio.Event,
        on_change: Callable[[], None],
        advertise: Callable[[], Awaitable[None]],
    ) -> None:
        self._settings = settings
        self._id = settings.worker_id
        self._client = client
        self._engine = engine
        self._residency = residency
        #: Set once the worker stops: no rescan or fetch starts serving anything new.
        self._stopping = stopping
        #: The served models changed (claim, placement and advert look again).
        self._on_change = on_change
        #: Writes the worker's advert now.
        self._advertise = advertise
        #: Each served model's job stream (changed in place by a store rescan: the claim
        #: loop and the placer read this very dict).
        self.models_by_stream = {keys.job_stream(m.name): m.name for m in engine.models()}
        #: Each served model's digest, to see a model whose file changed in a rescan.
        self._digests = {m.name: m.digest for m in engine.models()}
        #: ``keys.STORE_VERSION`` as last rescanned (None: never; a missing key reads None).
        self._store_version: bytes | None = None
        self._rescanning = asyncio.Lock()
        #: The store this worker can pull into (None: none, or not writable).
        self._store_root = pulls.writable_store(settings)
        #: Models pulled from a registry into another worker's store that this one may
        #: serve too, pulling them into its own first (``fetch``): their adverts.
        self.fetchable: dict[str, ModelAdvert] = {}
        #: Each fetchable model's ``insecure`` (``keys.STORE_SOURCES``).
        self._insecure: dict[str, bool] = {}
        #: What loading each servable model with default options takes here.
        self.needs = self._needs_of(engine.models())

    def _needs_of(self, adverts: list[ModelAdvert]) -> dict[str, int]:
        return {
            m.name: self._engine.memory_required(
                m.name, self._engine.effective_options(m.name, LoadOptions())
            )
            for m in adverts
        }

    async def store_changed(self) -> None:
        """This process wrote the store (a pull): serve and advertise it now, so the model
        is there when its client hears ``success``, not at the next heartbeat."""
        await self.rescan()
        await self._advertise()

    async def rescan(self) -> None:
        """Serve what the store holds now if a writer bumped ``keys.STORE_VERSION`` since
        the last look (a missing key, never bumped, reads as None: nothing to do)."""
        async with self._rescanning:  # the heartbeat's and a pull's: one at a time
            await self._rescan_once()

    async def _rescan_once(self) -> None:
        if self._settings.models_dir is None:
            return  # no store here: another's writes change nothing this worker serves
        version = await self._client.get(keys.STORE_VERSION)
        if version == self._store_version or self._stopping.is_set():
            return
        try:  # reading the store and the new GGUF headers is file I/O: off the event loop
            specs = await asyncio.to_thread(served_files, self._settings)
            await asyncio.to_thread(self._engine.set_models, specs)
        except Exception:  # a store that cannot be read must not stop the heartbeat
            log.exception("store_rescan_failed")
            return  # the version stays unseen: the next heartbeat tries again
        await self._serve(self._engine.models())
        self._store_version = version  # only once served: a Redis error retries it

    async def find_fetchable(self) -> None:
        """Which models pulled into other workers' stores this one could pull into its own:
        each of ``keys.STORE_SOURCES`` not served here whose advert is known (a live
        worker's, else the catalog's). Served like the store's (placement may pick this
        worker, which then pulls it first: ``fetch``)."""
        if self._store_root is None or self._stopping.is_set():
            return
        sources = await self._client.hgetall(keys.STORE_SOURCES)  # type: ignore[misc]
        local = {m.name for m in self._engine.models()}
        wanted: dict[str, bool] = {}
        for raw, value in sources.items():
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if name in local or name in self._residency.resident():
                continue
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                wanted[name] = bool(orjson.loads(value).get("insecure", False))
        found: dict[str, ModelAdvert] = {}
        if wanted:
            for advert in await live_workers(self._client):
                for model in advert.models:
                    if model.name in wanted and advert.worker_id != self._id:
                        found.setdefault(model.name, model)
            for name in wanted.keys() - found.keys():
                raw_advert = await self._client.hget(keys.CATALOG_SEEN, name)  # type: ignore[misc]
                if raw_advert is not None:
                    with contextlib.suppress(ValidationError):
                        found[name] = ModelAdvert.model_validate_json(raw_advert)
        self._insecure = {n: wanted[n] for n in found}
        if found.keys() == self.fetchable.keys():
            return
        async with self._rescanning:  # _serve's state: one writer at a time
            self.fetchable = found
            await self._serve(self._engine.models())

    async def fetch(self, model: str) -> None:
        """Placement loads ``model`` here: if this worker's store lacks it (fetchable),
        pull it from its registry into the store first, then serve the store anew."""
        root = self._store_root
        if root is None or model not in self.fetchable:
            return
        if model in {m.name for m in self._engine.models()}:
            return  # a rescan brought it already
        log.info("model_fetch", model=model)
        await pulls.fetch(
            self._settings, root, self._client, model, self._insecure.get(model, False)
        )
        await self.store_changed()
        log.info("model_fetched", model=model)

    async def _serve(self, adverts: list[ModelAdvert]) -> None:
        """Claim, place and advertise exactly ``adverts``' models, and the fetchable ones:
        a new model's stream gets its group before it is read; a removed or changed model
        (another digest) is unloaded once idle, and a removed one's stream is no longer
        read."""
        known = {m.name for m in adverts}
        fetchable = [a for n, a in self.fetchable.items() if n not in known]
        digests = {m.name: m.digest for m in [*adverts, *fetchable]}
        added = digests.keys() - self._digests.keys()
        removed = self._digests.keys() - digests.keys()
        changed = {
            n for n in digests.keys() & self._digests.keys() if digests[n] != self._digests[n]
        }
        if not (added or removed or changed):
            return
        for name in sorted(added):
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
                await self._client.xgroup_create(
                    keys.job_stream(name), keys.JOB_GROUP, id="0", mkstream=True
                )
        for name in removed:
            del self.models_by_stream[keys.job_stream(name)]
        for name in added:
            self.models_by_stream[keys.job_stream(name)] = name
        self._digests = digests
        self.needs = self._needs_of(adverts)
        # the engine knows a fetchable model only once it is in the store: its advert says
        self.needs.update({m.name: m.memory_bytes or m.size_bytes for m in fetchable})
        for name in removed:
            self._residency.expire(name)  # once idle: a running answer finishes
        for name in changed:
            self._residency.replaced(name)  # the next job loads the new file
        log.info(
            "store_rescanned", added=sorted(added), removed=sorted(removed), changed=sorted(changed)
        )
        self._on_change()
