"""The worker's job loop.

Delivery semantics:

- A job is claimed with ``XREADGROUP`` (group ``keys.JOB_GROUP``, consumer = worker id)
  only when it can start now: from the streams of models with a free slot (the engine's
  slots per model, less the jobs of it running here), with ``COUNT`` no larger than the
  fewest free slots among them, or from the stream of a model this worker could load next
  (one job, which loads it). A job that cannot start here stays in its stream for another
  worker. It is removed (``XACK`` + ``XDEL``) after its final event — done or error — is
  published; the stream holds only outstanding work.
- The claim's blocking read has a connection of its own: when the loaded models change,
  ``CLIENT UNBLOCK`` ends it at once, so a newly loaded model's jobs are taken without
  waiting out the block, and an unloaded model's are not taken. One delivered in that
  instant anyway is handed back (added again, same job, and the old entry removed).
- Its own stream (``keys.worker_jobs``) carries the chats the API routed here because this
  worker answered their earlier turns (their prompt is in its KV cache); it is read with
  the model streams whenever a slot is free, and a job on it whose model is not loaded
  here goes to the model's stream.
- Before running (with its model loaded: ``worker.jobs``), the worker publishes
  ``started``; PUBLISH answering 0 (no listener) or a cancel marker means the client is
  gone, and the job is dropped unrun. While running, a
  token that reaches no listener stops the generation.
- A worker whose advert expired is dead; live workers ``XCLAIM`` its pending entries, as
  many as they have free slots (never merely idle ones: a healthy generation can run for
  minutes), and run them again as a new attempt. The API fails, rather than repeats, a job
  whose text the client already saw. A job whose runs stopped ``HERD_MAX_ATTEMPTS``
  workers is a poison job: it goes to the dead-letter stream (``worker.poison``) and its
  client gets one error, never another worker's death.
- Models: the worker claims jobs only of the models it has loaded. Which worker loads a
  model with waiting jobs (or a further replica of a busy one) is placement's decision
  (``worker.placement``), made by every worker from the same view, with a Redis ticket
  so that exactly one loads; ``worker.residency`` keeps them (keep_alive, eviction by
  memory), and a control stream of its own (``worker.control``) unloads models on the
  API's request. Which models it serves (its store's, and others' it may fetch into it)
  is ``worker.serving``'s.
- The advert is rewritten every interval, and at once when a model loads or unloads.
- On SIGTERM the worker stops claiming and placing at once, advertises ``ready: false``,
  and drains (``worker.drain``): jobs it can give back go to their model's stream as new
  attempts (continuations, for streams under way), the rest get ``shutdown_grace_s`` to
  finish and then fail with an error event; then it withdraws its advert. A re-queued
  entry carries the attempts that ran (``drain.ATTEMPTS_FIELD``), so attempt numbers only
  grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import keys
from shared.messages import DeviceInfo, GenerateJob
from shared.settings import Settings
from worker import control, drain, poison
from worker.devices import Devices
from worker.engine import Engine
from worker.fake_engine import fake_device
from worker.heartbeat import Advertiser, ModelInfoSource
from worker.jobs import JobRunner
from worker.metrics import WorkerMetrics
from worker.placement.placer import Placer
from worker.placement.plan import Node, Replica
from worker.residency import Residency
from worker.serving import StoreServing

log = structlog.get_logger()

#: An entry of a dead worker is reclaimed once it is this idle (two janitors can't both win).
RECLAIM_MIN_IDLE_MS = 1000
#: Heartbeats after a silence past the TTL that look for running jobs taken over.
TAKEN_OVER_CHECKS = 3

#: A pending job to take over: stream, entry id, fields, attempt.
Orphan = tuple[str, str, dict[bytes, bytes], int]


class Worker:
    def __init__(
        self, settings: Settings, client: Redis, engine: Engine, devices: Devices | None = None
    ) -> None:
        self.settings = settings
        self.id = settings.worker_id
        self._client = client
        self.engine = engine
        fake = fake_device(settings.fake_memory, engine)
        #: a fake device of HERD_FAKE_MEMORY stands in for the real ones
        self.devices = fake or (devices if devices is not None else Devices())
        self.advertiser = Advertiser(client, self.id, engine.name, settings.heartbeat_ttl_s)
        self._tasks: set[asyncio.Task[None]] = set()
        self._own_stream = keys.worker_jobs(self.id)
        #: Jobs claimed per model and not finished yet.
        self._inflight: dict[str, int] = {}
        self._capacity = asyncio.Event()
        #: Stream entries this process is running, and their streams (others pending under
        #: its id are orphans).
        self._running: dict[str, str] = {}
        #: When the last heartbeat reached Redis (monotonic), and how many more beats look
        #: for jobs taken over since the last silence past the TTL.
        self._beaten_at = time.monotonic()
        self._recheck = 0
        #: What the drain knows of each running job, by stream entry.
        self._handoffs: dict[str, drain.Handoff] = {}
        #: Entries the drain gave back (stream, new id): the advert stands until others
        #: took them (or half the grace passed), so their clients wait for the next attempt.
        self._given_back: list[tuple[str, str]] = []
        self._stopping = asyncio.Event()
        #: The claim's blocking read: its own connection, so it can be unblocked.
        self._reader = Redis(connection_pool=client.connection_pool, single_connection_client=True)
        self._reader_id: int | None = None
        self._reading = False
        self._unblocks: set[asyncio.Task[None]] = set()
        self._beat_soon = asyncio.Event()
        self._beat_lock = asyncio.Lock()
        #: The devices as last read (the heartbeat reads them off the event loop).
        self._seen_devices: list[DeviceInfo] = []
        #: Served at the health port's /metrics (its own registry: worker.metrics says why).
        self.metrics = WorkerMetrics()
        self.residency = Residency(
            engine,
            max_loaded=settings.max_loaded_models,
            default_keep_alive_s=settings.keep_alive_s,
            on_change=self._models_changed,
            budget=lambda: self.memory()[0],
            claimed=lambda name: self._inflight.get(name, 0),
            on_loaded=lambda name, seconds: self.metrics.model_load.labels(name).observe(seconds),
        )
        #: Which models it serves: its store's, and those it may fetch into it.
        self.store = StoreServing(
            settings,
            client,
            engine,
            self.residency,
            self._stopping,
            self._models_changed,
            self._beat,
        )
        self._models_by_stream = self.store.models_by_stream  # the same dict, changed in place
        self.placer = Placer(
            client,
            settings,
            self._models_by_stream.values(),
            self.residency,
            self.node,
            fetch=self.store.fetch,
        )
        self._jobs = JobRunner(client, engine, self.residency, self.id, self._beat, self.metrics)
        self.metrics.watch(self)
        self.ready = False

    @property
    def active_jobs(self) -> int:
        return len(self._tasks)

    @property
    def streams(self) -> list[str]:
        return list(self._models_by_stream)

    def capacity(self, model: str) -> int:
        """Jobs of ``model`` this worker could start now: free slots of a loaded model
        (a model not loaded here is placement's to load, here or elsewhere)."""
        if not self.residency.serving(model):
            return 0
        return max(0, self.engine.slots(model) - self._inflight.get(model, 0))

    def slot_counts(self) -> list[tuple[str, int, int]]:
        """(model, busy, free) slots of each model loaded here (``herd_worker_slots``)."""
        counts = []
        for name in self.residency.resident():
            slots = self.engine.slots(name)
            busy = min(slots, self._inflight.get(name, 0))
            counts.append((name, busy, slots - busy))
        return counts

    def loaded_count(self) -> int:
        return len(self.residency.resident())

    def device_snapshot(self) -> list[DeviceInfo]:
        """The devices as the heartbeat last read them (a scrape reads no device)."""
        return list(self._seen_devices)

    def memory(self) -> tuple[int, int]:
        """Bytes models may fill here, and how much of that is free now: what the devices
        report free, never more than the budget less what the resident models take."""
        devices = self._seen_devices
        total = int(sum(d.total_bytes for d in devices) * self.settings.memory_fraction)
        free = min(total - self.residency.used(), sum(d.free_bytes for d in devices))
        return total, max(0, free)

    def node(self) -> Node:
        """This worker as placement sees it, as of now."""
        total, free = self.memory()
        kept = self.residency.kept()
        return Node(
            id=self.id,
            memory_total=total,
            memory_free=free,
            servable=self.store.needs,
            replicas={
                name: Replica(
                    # jobs claimed count from the claim, not from when they attach
                    max(self.residency.busy(name), self._inflight.get(name, 0)),
                    self.store.needs.get(name, 0),
                    kept=name in kept,
                    idle_s=self.residency.idle_s(name),
                    expires_in_s=self.residency.expires_in_s(name),
                    slots=self.engine.slots(name),
                )
                for name in self.residency.resident()
            },
            loading=set(self.residency.loading),
            max_loaded=self.residency.max_loaded,
        )

    def _models_changed(self) -> None:
        self._beat_soon.set()
        self._capacity.set()
        self.placer.wake.set()
        if self._reading and self._reader_id is not None:
            task = asyncio.create_task(self._unblock(self._reader_id))
            self._unblocks.add(task)
            task.add_done_callback(self._unblocks.discard)

    async def _unblock(self, reader_id: int) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._client.client_unblock(reader_id)

    def stop(self) -> None:
        """Stop claiming now; ``run`` then drains and returns."""
        self._stopping.set()

    async def run(self) -> None:
        started = time.perf_counter()
        await self.engine.start()
        # what start-up preloads counts as a load, each model with the whole start
        for model in self.engine.loaded():
            self.metrics.model_load.labels(model.name).observe(time.perf_counter() - started)
        self._seen_devices = await asyncio.to_thread(self.devices.snapshot)
        self.residency.adopt_preloaded()
        await control.clear(self._client, self.id)
        await self._ensure_groups()
        await self._beat()
        self.ready = True
        log.info("worker_ready", worker_id=self.id, models=[m.name for m in self.engine.models()])
        placement = asyncio.create_task(self.placer.run(), name="placement")
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(
                control.control_loop(self._client, self.id, self.residency), name="control"
            ),
            placement,
        ]
        claim = asyncio.create_task(self._claim_loop(), name="claim")
        await self._stopping.wait()
        claim.cancel()  # a job claimed mid-read stays pending for another worker to take
        placement.cancel()  # no load starts here any more: placement looks elsewhere
        # redis-py can sit in a cancelled read (seen in tests): never let it hold the drain
        await asyncio.wait({claim}, timeout=keys.BLOCK_MS / 1000 + 1)
        with contextlib.suppress(RedisError, OSError):
            await self._beat()  # ready: false, before any job goes back
        await drain.Drain(
            self._client, self.id, self.settings.shutdown_grace_s, self._models_by_stream.values()
        ).run(self._tasks, self._handoffs, self._given_back)
        for task in background:
            task.cancel()
        # as the claim above: a task in a cancelled redis-py read must not hold the exit
        _, stuck = await asyncio.wait(background, timeout=keys.BLOCK_MS / 1000 + 1)
        if stuck:
            log.warning("worker_tasks_not_stopped", tasks=sorted(t.get_name() for t in stuck))
        self.ready = False
        await self.residency.close()
        with contextlib.suppress(RedisError, OSError):
            await self.advertiser.withdraw()
            await control.clear(self._client, self.id)
        await self._reader.aclose()
        await self.engine.close()
        self.devices.close()
        log.info("worker_stopped", worker_id=self.id)

    async def _ensure_groups(self) -> None:
        """Create the consumer group on every stream read (again, after a Redis that came
        back empty: its streams and groups are gone, and every read would be NOGROUP)."""
        for stream in [*self.streams, self._own_stream]:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
                await self._client.xgroup_create(stream, keys.JOB_GROUP, id="0", mkstream=True)

    async def _claim_loop(self) -> None:
        models = self._models_by_stream
        next_reclaim = 0.0
        while True:
            free = {s: c for s, m in models.items() if (c := self.capacity(m)) > 0}
            if not free:
                self._capacity.clear()
                with contextlib.suppress(TimeoutError):  # not wait_for: see Placer.run
                    async with asyncio.timeout(self.settings.heartbeat_interval_s):
                        await self._capacity.wait()
                continue
            try:
                # jobs of dead workers first, checked once per heartbeat interval
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + self.settings.heartbeat_interval_s
                    own = {self._own_stream: max(free.values())}
                    orphans = await self._reclaim({**free, **own})
                    for orphan in orphans:
                        self._spawn(*orphan)
                    if orphans:
                        continue
                if self._reader_id is None:
                    self._reader_id = int(await self._reader.client_id())
                # COUNT applies per stream: never more than any of them has room for
                self._reading = True
                try:
                    reply = await self._reader.xreadgroup(
                        keys.JOB_GROUP,
                        self.id,
                        dict.fromkeys([self._own_stream, *free], ">"),
                        count=min(free.values()),
                        block=keys.BLOCK_MS,
                    )
                finally:
                    self._reading = False
                for stream, batch in reply or []:
                    for entry_id, fields in batch:
                        await self._take(stream.decode(), entry_id.decode(), fields)
            except (RedisError, OSError) as exc:
                self._reader_id = None  # a new connection has a new id
                log.warning("claim_failed", error=str(exc))
                await asyncio.sleep(1)
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    with contextlib.suppress(RedisError, OSError):
                        await self._ensure_groups()
                continue

    def _model_of(self, stream: str, fields: dict[bytes, bytes]) -> str:
        model = self._models_by_stream.get(stream)
        if model is None:  # this worker's own stream: any model
            with contextlib.suppress(ValueError, KeyError, AttributeError):
                model = str(orjson.loads(fields[b"job"])["model"])
        return model or ""

    async def _take(self, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """Run a claimed job, or hand it back to its model's stream if the model is not
        loaded here (an eviction raced the read, or a routed job came late)."""
        model = self._model_of(stream, fields)
        served = keys.job_stream(model) in self._models_by_stream
        if not served or self.residency.serving(model) or model in self.residency.resident():
            self._spawn(stream, entry_id, fields, attempt=_attempts_before(fields) + 1)
            return
        await self._requeue(stream, entry_id, model, fields)
        log.info("job_handed_back", model=model, entry_id=entry_id)

    async def _requeue(
        self, stream: str, entry_id: str, model: str, fields: dict[bytes, bytes]
    ) -> str:
        """Move an entry to the end of its model's stream, atomically (never run twice);
        returns its new entry id."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.job_stream(model), fields)  # type: ignore[arg-type]
            pipe.xack(stream, keys.JOB_GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            new_id, *_ = await pipe.execute()
        return str(new_id.decode() if isinstance(new_id, bytes) else new_id)

    def _spawn(self, stream: str, entry_id: str, fields: dict[bytes, bytes], attempt: int) -> None:
        model = self._model_of(stream, fields)
        self._inflight[model] = self._inflight.get(model, 0) + 1
        task = asyncio.create_task(self._handle(stream, entry_id, fields, attempt))
        self._tasks.add(task)
        self._running[entry_id] = stream
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._running.pop(entry_id, None))
        task.add_done_callback(lambda _: self._finished(model))

    def _finished(self, model: str) -> None:
        self._inflight[model] -= 1
        self._capacity.set()
        self.placer.wake.set()

    async def _handle(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], attempt: int
    ) -> None:
        handoff: drain.Handoff | None = None
        try:
            try:
                job = GenerateJob.from_fields(fields)
            except ValidationError:
                log.error("job_invalid", stream=stream, entry_id=entry_id)
                return
            handoff = self._jobs.handoff(job)
            handoff.task = asyncio.current_task()
            self._handoffs[entry_id] = handoff
            if self._stopping.is_set():  # claimed as the drain began: back at once
                handoff.request()
            cause = "drain" if fields.get(drain.CAUSE_FIELD) == b"drain" else "crash"
            with structlog.contextvars.bound_contextvars(
                request_id=job.trace_id or job.request_id,
                job_id=job.request_id,
                model=job.model,
                worker_id=self.id,
            ):
                try:
                    await self._jobs.run(job, attempt, handoff, cause)
                except (RedisError, OSError) as exc:  # its events cannot be published
                    log.warning("job_lost_redis", error=str(exc))
        finally:
            self._handoffs.pop(entry_id, None)
            # shielded: a second cancel (the drain's, after the job's own) must not leave
            # the entry pending, to run again as an orphan
            await asyncio.shield(self._settle(stream, entry_id, fields, attempt, handoff))

    async def _settle(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        attempt: int,
        handoff: drain.Handoff | None,
    ) -> None:
        """The entry of a job that ended here: acknowledged and deleted, re-queued (given
        back), or left to the worker that took it over (it is the other's now)."""
        with contextlib.suppress(RedisError, OSError):
            if handoff is not None and handoff.stopped == "taken_over":
                return
            if handoff is not None and handoff.handed_off:
                await self._give_back(stream, entry_id, fields, attempt)
            else:
                await self._client.xack(stream, keys.JOB_GROUP, entry_id)
                await self._client.xdel(stream, entry_id)

    async def _give_back(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], attempt: int
    ) -> None:
        """Re-queue a job the drain stopped, on its model's stream, after ``attempt``."""
        model = self._model_of(stream, fields)
        again = {**fields, drain.ATTEMPTS_FIELD: str(attempt).encode(), drain.CAUSE_FIELD: b"drain"}
        new_id = await self._requeue(stream, entry_id, model, again)
        self._given_back.append((keys.job_stream(model), new_id))
        log.info("job_given_back", model=model, attempt=attempt)

    async def _beat(self) -> None:
        async with self._beat_lock:  # an older snapshot never overwrites a newer one
            self._beat_soon.clear()
            devices = await asyncio.to_thread(self.devices.snapshot)
            self._seen_devices = devices
            models = [
                m.model_copy(update={"memory_bytes": self.store.needs.get(m.name, m.memory_bytes)})
                for m in self.engine.models()
            ]
            info = list(models)  # the engine has no metadata of a fetchable model yet
            known = {m.name for m in models}
            models += [a for n, a in self.store.fetchable.items() if n not in known]
            loaded = self.residency.loaded()
            total, free = self.memory()
            advert = self.advertiser.advert(
                devices=devices,
                models=models,
                total=sum(m.slots for m in loaded),
                free=sum(max(0, m.slots - self._inflight.get(m.name, 0)) for m in loaded),
                loaded=loaded,
                ready=not self._stopping.is_set(),
            ).model_copy(
                update={
                    "memory_total": total,
                    "memory_free": free,
                    "loading": sorted(self.residency.loading),
                    "max_loaded": self.residency.max_loaded,
                    "tokens_generated": dict(self._jobs.tokens),
                }
            )
            await self.advertiser.beat(advert)
            self.residency.mark_advertised([m.name for m in loaded])
        source: ModelInfoSource | None = getattr(self.engine, "full_model_info", None)
        await self.advertiser.write_model_info(info, source)

    async def _heartbeat_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: see Placer.run
                async with asyncio.timeout(self.settings.heartbeat_interval_s):
                    await self._beat_soon.wait()
            try:
                await self.store.rescan()
                await self.store.find_fetchable()
                await self._beat()
                silent_s, self._beaten_at = time.monotonic() - self._beaten_at, time.monotonic()
                if silent_s > self.settings.heartbeat_ttl_s:
                    self._recheck = TAKEN_OVER_CHECKS  # a reclaim may land a moment later
                if self._recheck:
                    await self._stop_taken_over(silent_s)
                    self._recheck -= 1
            except (RedisError, OSError) as exc:
                log.warning("heartbeat_failed", error=str(exc))

    async def _stop_taken_over(self, silent_s: float) -> None:
        """This worker was silent past its advert's TTL (stopped, starved, cut off): other
        workers may have taken over its jobs (``_reclaim``; one that found the advert gone
        just before this beat claims a moment after it, hence ``TAKEN_OVER_CHECKS`` beats).
        Each one they did stops here, unacknowledged, rather than run twice."""
        running = list(self._running.items())
        async with self._client.pipeline(transaction=False) as pipe:  # one round trip
            for entry_id, stream in running:
                pipe.xpending_range(stream, keys.JOB_GROUP, entry_id, entry_id, 1)
            replies = await pipe.execute()
        for (entry_id, _), owned in zip(running, replies, strict=True):
            if owned and owned[0]["consumer"].decode() == self.id:
                continue
            handoff = self._handoffs.get(entry_id)
            if handoff is not None and handoff.task is not None:
                log.warning("job_taken_over", entry_id=entry_id, silent_s=round(silent_s, 1))
                handoff.stopped = "taken_over"
                handoff.task.cancel()

    async def store_changed(self) -> None:
        """This process wrote the store (a pull): serve and advertise it now (``StoreServing``)."""
        await self.store.store_changed()

    async def _reclaim(self, room: dict[str, int]) -> list[Orphan]:
        """Take over pending jobs of workers whose advert expired: on each stream of
        ``room``, as many as it has room for, in one XCLAIM per stream.

        Entries pending under this worker's own id that this process is not running were
        left by an earlier process with the same id (a restarted pod keeps its hostname):
        they are orphans too, though the id's advert is alive again. A job whose runs
        already stopped ``max_attempts`` workers is set aside (``poison``), not run."""
        taken: list[Orphan] = []
        alive: dict[str, bool] = {}
        for stream, limit in room.items():
            pending = await self._client.xpending_range(stream, keys.JOB_GROUP, "-", "+", 100)
            chosen: dict[str, tuple[str, int]] = {}
            for entry in pending:
                owner, entry_id = entry["consumer"].decode(), entry["message_id"].decode()
                if owner == self.id:
                    if entry_id in self._running:
                        continue
                else:
                    if owner not in alive:
                        alive[owner] = bool(await self._client.exists(keys.worker_key(owner)))
                    if alive[owner]:
                        continue
                chosen[entry_id] = (owner, int(entry["times_delivered"]))
                if len(chosen) >= limit:
                    break
            if not chosen:
                continue
            claimed = await self._client.xclaim(
                stream, keys.JOB_GROUP, self.id, RECLAIM_MIN_IDLE_MS, list(chosen)
            )
            for raw_id, fields in claimed:
                entry_id = raw_id.decode()
                if not fields:  # deleted meanwhile
                    continue
                owner, delivered = chosen[entry_id]
                if delivered >= self.settings.max_attempts:
                    await poison.set_aside(self._client, stream, entry_id, fields, owner, delivered)
                    continue
                log.warning("job_reclaimed", from_worker=owner, entry_id=entry_id)
                taken.append((stream, entry_id, fields, _attempts_before(fields) + delivered + 1))
        return taken


def _attempts_before(fields: dict[bytes, bytes]) -> int:
    """Attempts of the job that ran before its entry was queued (a drain re-queued it)."""
    with contextlib.suppress(ValueError):
        return int(fields.get(drain.ATTEMPTS_FIELD, b"0"))
    return 0
