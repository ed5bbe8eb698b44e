"""``python -m bench.placement``: placement at scale, simulated.

A discrete-event simulation of a cluster (by default 1,000 workers with GPUs of 24, 48 and
80 GiB, 100 models of 1-48 GiB) under a skewed, shifting workload: Poisson arrivals, Zipf
popularity over the models, the ranking drawn afresh every ``--shift`` seconds. The same
arrivals go through each policy:

- **herd**: the placement of ``worker.placement``. Every ``--tick`` seconds the cluster's
  state (every worker sees the same truth) goes through ``worker.placement.plan.plan``, the
  very function the workers run, imported and not rewritten, and each load it names is
  started as ``Placer._load`` and ``Residency.place`` start it: the model's load ticket is
  taken (held while the load runs and ``--cooldown`` seconds after, given back at once
  when no room could be made), the idle models the plan names for eviction go (those
  still idle, until the model fits), and the load takes ``size / bandwidth + overhead``.
  Workers take jobs only of the models they have loaded, into a free slot (``--slots``
  per replica; jobs queue per model, first in first out).
- **today**: the policy before placement (``worker.consumer`` at commit 0715cff): a job
  goes to whichever worker claims it first among those that could start it now: one with
  the model loaded and a free slot, or one with no load under way that could load it
  (fewer than ``max_loaded`` models, or an idle one to evict, the one expiring first).
  Which of them claims first is taken as uniformly random. Memory is not looked at: a
  load that does not fit beside the models already resident fails (out of memory), and
  so does its job. Several workers may load one cold model at once.
- **today-warm** (``--all``): today's policy at its most favourable: a worker with the
  model loaded and a free slot always claims before one that would load it.

Both keep an idle model ``--keep-alive`` seconds and drop a job not started within
``--queue-timeout`` seconds (the API's 503). The first ``--warmup`` seconds of arrivals run
but are not counted (the figures are of a running cluster, not of its boot); then
``--duration`` seconds are, and the cluster drains what is left. A job's queue wait runs
from its arrival to its start (after the load it waited for); the wait percentiles are of
the jobs that started and of those dropped at the timeout (counted as waiting the
timeout); jobs whose load failed are counted apart. Memory utilisation is the memory held
by loaded and loading models over the cluster's, averaged over the measured window.

Deterministic for a seed. ``plan`` is called only on the ticks where it has something to
decide: when a model whose ticket is free has a reason to gain a replica by
``worker.placement.plan._reason`` (its own rule); on the other ticks it would return an
empty plan, as no replica policies are set (``--every-tick`` calls it anyway).
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import random
import time
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from worker.placement.plan import Demand, Node, Params, Replica, plan

GIB = 2**30
Policy = Literal["herd", "today", "today-warm"]
POLICIES: tuple[Policy, ...] = ("herd", "today", "today-warm")

#: Model files of a catalogue (GiB, share): 1B, 3B, 7-8B, 12-14B, 27-32B and 70B models
#: at 4-5 bits; each drawn size varies by up to 20 % around these.
CATALOGUE: tuple[tuple[float, float], ...] = (
    (1.0, 0.15),
    (2.0, 0.15),
    (4.7, 0.30),
    (8.5, 0.15),
    (18.0, 0.15),
    (40.0, 0.10),
)


@dataclass(frozen=True)
class Config:
    workers: int = 1000
    models: int = 100
    #: GPU memory (GiB) and share of the workers.
    gpus: tuple[tuple[int, float], ...] = ((24, 0.40), (48, 0.35), (80, 0.25))
    #: Share of a GPU's memory models may fill (``memory_fraction``).
    memory_fraction: float = 0.9
    max_loaded: int = 4
    #: Sequences a replica runs at once.
    slots: int = 8
    #: Jobs per second, all models together.
    rate: float = 300.0
    zipf_s: float = 1.1
    #: Every this many seconds the popularity ranking is drawn afresh.
    shift_s: float = 300.0
    #: Seconds of arrivals run but not counted, then seconds counted.
    warmup_s: float = 600.0
    duration_s: float = 1800.0
    #: Mean tokens a job generates (exponential).
    tokens_mean: float = 400.0
    #: Seconds of prompt reading per job.
    prefill_s: float = 0.3
    keep_alive_s: float = 300.0
    load_gb_s: float = 2.0
    load_overhead_s: float = 1.0
    tick_s: float = 0.5
    scale_out_wait_s: float = 3.0
    cooldown_s: float = 10.0
    #: What if: at most this many loads of one model at once (the Placer: as many as the
    #: plan asks for).
    tickets: int = 1_000_000
    queue_timeout_s: float = 300.0
    #: Share of the workers that have each model's file (1: all).
    file_share: float = 1.0
    seed: int = 1

    def quick(self) -> Config:
        """A small cluster of the same shape: a tenth of the workers and of the load, a
        fifth of the models, five minutes of warm-up and ten counted, shifts every two."""
        return replace(
            self,
            workers=self.workers // 10,
            models=self.models // 5,
            rate=self.rate / 10,
            warmup_s=300.0,
            duration_s=600.0,
            shift_s=120.0,
        )


@dataclass(frozen=True)
class Model:
    name: str
    #: Bytes a load takes in memory (weights and KV cache).
    need: int
    #: Tokens per second of one sequence.
    tps: float
    load_s: float


@dataclass(frozen=True)
class Cluster:
    models: tuple[Model, ...]
    #: Per worker: bytes models may fill.
    memory: tuple[int, ...]
    #: Per worker: the models (indices) it has the file of.
    files: tuple[frozenset[int], ...]


@dataclass(frozen=True)
class Workload:
    arrival: array[float]
    model: array[int]
    service: array[float]

    def __len__(self) -> int:
        return len(self.arrival)


def build(config: Config) -> tuple[Cluster, Workload]:
    """The cluster and the arrivals for ``config`` (the same for every policy)."""
    rng = random.Random(f"models-{config.seed}")
    sizes, shares = zip(*CATALOGUE, strict=True)
    models = []
    for i in range(config.models):
        gib = rng.choices(sizes, weights=shares)[0] * rng.uniform(0.8, 1.2)
        size = int(gib * GIB)
        models.append(
            Model(
                name=f"model-{i:03d}",
                # the weights, KV cache for the slots and compute buffers
                need=int(size * 1.2 + 0.5 * GIB),
                tps=150.0 / math.sqrt(gib),
                load_s=size / (config.load_gb_s * 1e9) + config.load_overhead_s,
            )
        )
    rng = random.Random(f"workers-{config.seed}")
    gib_choices, gpu_shares = zip(*config.gpus, strict=True)
    memory = tuple(
        int(rng.choices(gib_choices, weights=gpu_shares)[0] * GIB * config.memory_fraction)
        for _ in range(config.workers)
    )
    largest = max(range(config.workers), key=lambda w: memory[w])
    everything = frozenset(range(config.models))
    files = []
    for w in range(config.workers):
        if config.file_share >= 1 or w == largest:  # every model fits somewhere
            files.append(everything)
        else:
            files.append(frozenset(m for m in everything if rng.random() < config.file_share))
    cluster = Cluster(tuple(models), memory, tuple(files))

    rng = random.Random(f"arrivals-{config.seed}")
    weights = [1.0 / (rank + 1) ** config.zipf_s for rank in range(config.models)]
    cumulative = [sum(weights[: i + 1]) for i in range(config.models)]
    end = config.warmup_s + config.duration_s
    periods = math.ceil(end / config.shift_s)
    rankings = [rng.sample(range(config.models), config.models) for _ in range(periods)]
    arrival: array[float] = array("d")
    chosen: array[int] = array("i")
    service: array[float] = array("d")
    t = rng.expovariate(config.rate)
    while t < end:
        rank = bisect.bisect_left(cumulative, rng.random() * cumulative[-1])
        m = rankings[int(t // config.shift_s)][min(rank, config.models - 1)]
        tokens = rng.expovariate(1.0 / config.tokens_mean)
        arrival.append(t)
        chosen.append(m)
        service.append(config.prefill_s + tokens / models[m].tps)
        t += rng.expovariate(config.rate)
    return cluster, Workload(arrival, chosen, service)


@dataclass
class Counts:
    """What happened to the models (from the end of the warm-up)."""

    loads: int = 0
    #: Loads that failed: the model did not fit beside the resident ones (today).
    failed_loads: int = 0
    evictions: int = 0
    #: Idle models unloaded after keep_alive.
    expired: int = 0
    #: The most loads of one model under way at once, across the cluster.
    max_parallel_loads: int = 0
    #: Loads given up: the evictions named did not make room (herd).
    no_room: int = 0
    plan_calls: int = 0
    plan_s: float = 0.0


@dataclass
class Result(Counts):
    policy: str = ""
    jobs: int = 0
    #: Jobs that started (and ran to their end).
    completed: int = 0
    #: Jobs whose load failed (out of memory).
    failed: int = 0
    timed_out: int = 0
    wait_p50: float = 0.0
    wait_p99: float = 0.0
    wait_max: float = 0.0
    #: Memory held by models over the cluster's, averaged over the measured window.
    memory_util: float = 0.0
    #: Sequences running over the slots of the loaded replicas, averaged likewise.
    slot_util: float = 0.0
    #: Invariants over the whole run (herd must keep both at 0): a load that took a worker
    #: past its memory; a load started on a worker loading a model, or having it loaded.
    oversubscribed: int = 0
    double_loads: int = 0
    sim_s: float = 0.0


# job outcomes
_PENDING, _STARTED, _FAILED, _TIMED_OUT = range(4)
# event kinds
_DONE, _LOADED, _LOAD_FAILED, _EXPIRE, _TICK = range(5)


class _Res:
    """A model resident on a worker."""

    __slots__ = ("busy", "expiring", "idle_since")

    def __init__(self, now: float) -> None:
        self.busy = 0
        self.idle_since = now
        self.expiring = False


_Event = tuple[float, int, int, int, int, _Res | None]


class _Worker:
    __slots__ = (
        "files",
        "i",
        "id",
        "idle",
        "loading",
        "pending",
        "resident",
        "servable",
        "total",
        "used",
    )

    def __init__(self, i: int, total: int, files: frozenset[int], servable: dict[str, int]):
        self.i = i
        self.id = f"w{i:04d}"
        self.total = total
        self.files = files
        self.servable = servable
        self.resident: dict[int, _Res] = {}
        #: The model being loaded (-1: none), and the job that waits for it (today).
        self.loading = -1
        self.pending = -1
        #: Resident models with no job running.
        self.idle = 0
        #: Bytes the resident models and the one loading take.
        self.used = 0


class Simulation:
    def __init__(
        self,
        config: Config,
        cluster: Cluster,
        workload: Workload,
        policy: Policy,
        *,
        every_tick: bool = False,
    ) -> None:
        self.config = config
        self.policy = policy
        self.every_tick = every_tick
        self.models = cluster.models
        self.needs = [m.need for m in cluster.models]
        self.names = [m.name for m in cluster.models]
        self.index = {m.name: i for i, m in enumerate(cluster.models)}
        self.work = workload
        everything = {m.name: m.need for m in cluster.models}
        self.workers = [
            _Worker(
                i,
                total,
                files,
                everything
                if len(files) == len(everything)
                else {self.names[m]: self.needs[m] for m in sorted(files)},
            )
            for i, (total, files) in enumerate(zip(cluster.memory, cluster.files, strict=True))
        ]
        self.by_id = {w.id: w for w in self.workers}
        n = len(cluster.models)
        self.queue: list[deque[int]] = [deque() for _ in range(n)]
        #: Models with jobs queued.
        self.waiting: set[int] = set()
        #: Per model, a free slot each: (worker, the replica it was free on).
        self.free: list[deque[tuple[_Worker, _Res]]] = [deque() for _ in range(n)]
        #: Workers with the model loaded or loading.
        self.holders = [0] * n
        self.loads_now = [0] * n
        #: Per model, until when each of its load tickets is taken (inf: a load runs).
        self.tickets: list[list[float]] = [[] for _ in range(n)]
        # as the Placer sets them
        self.params = Params(
            scale_out_wait_s=config.scale_out_wait_s, starve_s=2 * config.scale_out_wait_s
        )
        self.rng = random.Random(f"claims-{config.seed}")
        self.events: list[_Event] = []
        self.seq = 0
        self.count = Counts()
        self.oversubscribed = 0
        self.double_loads = 0
        self.wait = array("d", [math.nan]) * len(workload)
        self.outcome = array("b", [_PENDING]) * len(workload)
        self.resolved = 0
        self.warm = config.warmup_s <= 0
        self.end = config.warmup_s + config.duration_s
        # integrals over the measured window
        self.used = 0
        self.busy = 0
        self.slots_loaded = 0
        self.last = config.warmup_s
        self.used_area = 0.0
        self.busy_area = 0.0
        self.slots_area = 0.0

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> Result:
        started = time.perf_counter()
        work = self.work
        n = len(work)
        self._push(0.0, _TICK, -1, -1)
        k = 0
        events = self.events
        while self.resolved < n:
            if k < n and work.arrival[k] < events[0][0]:
                now = work.arrival[k]
                self._advance(now)
                self._arrive(k, now)
                k += 1
                continue
            now, _, kind, w, m, res = heapq.heappop(events)
            self._advance(now)
            if kind == _DONE:
                self._done(self.workers[w], m, now)
            elif kind == _LOADED:
                self._loaded(self.workers[w], m, now)
            elif kind == _LOAD_FAILED:
                self._load_failed(self.workers[w], m, now)
            elif kind == _EXPIRE:
                assert res is not None
                self._expire(self.workers[w], m, res, now)
            else:
                self._tick(now)
        self._advance(self.end)
        return self._summary(time.perf_counter() - started)

    def _push(self, t: float, kind: int, w: int, m: int, res: _Res | None = None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, w, m, res))

    def _advance(self, now: float) -> None:
        if not self.warm and now >= self.config.warmup_s:
            self.warm = True
            self.count = Counts(max_parallel_loads=max(self.loads_now))
        end = min(now, self.end)
        if end > self.last:
            span = end - self.last
            self.used_area += self.used * span
            self.busy_area += self.busy * span
            self.slots_area += self.slots_loaded * span
            self.last = end

    # -- jobs --------------------------------------------------------------------------

    def _arrive(self, job: int, now: float) -> None:
        m = self.work.model[job]
        queue = self._queue(m, now)
        if queue:  # others wait already: nobody could take one (else they'd have)
            queue.append(job)
            return
        if self.policy == "today":
            self._claim_random(job, m, now)
            return
        slot = self._free_slot(m)
        if slot is not None:
            self._start(job, slot[0], m, slot[1], now)
        elif self.policy == "today-warm":
            worker = self._loader(m)
            if worker is None:
                self._enqueue(job, m)
            else:
                self._load_for_job(worker, m, job, now)
        else:
            self._enqueue(job, m)

    def _enqueue(self, job: int, m: int) -> None:
        self.queue[m].append(job)
        self.waiting.add(m)

    def _queue(self, m: int, now: float) -> deque[int]:
        """``m``'s queue, less the jobs that waited past the timeout (dropped: 503)."""
        queue = self.queue[m]
        limit = now - self.config.queue_timeout_s
        arrival = self.work.arrival
        while queue and arrival[queue[0]] <= limit:
            job = queue.popleft()
            self.wait[job] = self.config.queue_timeout_s
            self.outcome[job] = _TIMED_OUT
            self.resolved += 1
        if not queue:
            self.waiting.discard(m)
        return queue

    def _free_slot(self, m: int) -> tuple[_Worker, _Res] | None:
        free = self.free[m]
        slots = self.config.slots
        while free:
            worker, res = free.popleft()
            if worker.resident.get(m) is res and res.busy < slots:
                return worker, res
        return None

    def _start(self, job: int, worker: _Worker, m: int, res: _Res, now: float) -> None:
        if res.busy == 0:
            worker.idle -= 1
        res.busy += 1
        self.busy += 1
        self.wait[job] = now - self.work.arrival[job]
        self.outcome[job] = _STARTED
        self._push(now + self.work.service[job], _DONE, worker.i, m)

    def _done(self, worker: _Worker, m: int, now: float) -> None:
        res = worker.resident[m]
        res.busy -= 1
        self.busy -= 1
        self.resolved += 1
        queue = self._queue(m, now)
        if queue:
            self._start(queue.popleft(), worker, m, res, now)
            if not queue:
                self.waiting.discard(m)
            return
        if self.policy != "today":  # today claims at random, not through the slot queue
            self.free[m].append((worker, res))
        if res.busy == 0:
            worker.idle += 1
            res.idle_since = now
            if not res.expiring:
                res.expiring = True
                self._push(now + self.config.keep_alive_s, _EXPIRE, worker.i, m, res)
            if self.policy != "herd" and worker.idle == 1:
                self._offer_load(worker, now)

    def _fill(self, worker: _Worker, m: int, res: _Res, now: float) -> None:
        """Queued jobs of ``m`` into the new replica's free slots; the rest on offer."""
        queue = self._queue(m, now)
        slots = self.config.slots
        while queue and res.busy < slots:
            self._start(queue.popleft(), worker, m, res, now)
        if not queue:
            self.waiting.discard(m)
        if self.policy != "today":
            self.free[m].extend([(worker, res)] * (slots - res.busy))
        if res.busy == 0 and not res.expiring:
            res.expiring = True
            self._push(now + self.config.keep_alive_s, _EXPIRE, worker.i, m, res)

    # -- residency ---------------------------------------------------------------------

    def _expire(self, worker: _Worker, m: int, res: _Res, now: float) -> None:
        if worker.resident.get(m) is not res:
            return
        res.expiring = False
        if res.busy:
            return  # its last job's end schedules the next expiry
        due = res.idle_since + self.config.keep_alive_s
        if now < due:
            res.expiring = True
            self._push(due, _EXPIRE, worker.i, m, res)
            return
        self._unload(worker, m)
        self.count.expired += 1
        if self.policy != "herd":
            self._offer_load(worker, now)

    def _unload(self, worker: _Worker, m: int) -> None:
        res = worker.resident.pop(m)
        assert res.busy == 0
        worker.idle -= 1
        worker.used -= self.needs[m]
        self.used -= self.needs[m]
        self.slots_loaded -= self.config.slots
        self.holders[m] -= 1

    def _evict_one(self, worker: _Worker) -> bool:
        """Unload the idle model expiring first (all share one keep_alive)."""
        idle = [(res.idle_since, m) for m, res in worker.resident.items() if not res.busy]
        if not idle:
            return False
        self._unload(worker, min(idle)[1])
        self.count.evictions += 1
        return True

    def _begin_load(self, worker: _Worker, m: int, now: float, *, fits: bool) -> None:
        if worker.loading >= 0 or m in worker.resident:
            self.double_loads += 1
        worker.loading = m
        self.count.loads += 1
        self.loads_now[m] += 1
        self.count.max_parallel_loads = max(self.count.max_parallel_loads, self.loads_now[m])
        if not fits:  # today: the allocation fails once the load begins
            self.count.failed_loads += 1
            self._push(now + self.config.load_overhead_s, _LOAD_FAILED, worker.i, m)
            return
        worker.used += self.needs[m]
        self.used += self.needs[m]
        self.holders[m] += 1
        if worker.used > worker.total:
            self.oversubscribed += 1
        self._push(now + self.models[m].load_s, _LOADED, worker.i, m)

    def _loaded(self, worker: _Worker, m: int, now: float) -> None:
        worker.loading = -1
        self.loads_now[m] -= 1
        res = _Res(now)
        worker.resident[m] = res
        worker.idle += 1
        self.slots_loaded += self.config.slots
        if self.policy == "herd":  # the ticket stays taken for the cooldown
            tickets = self.tickets[m]
            tickets[tickets.index(math.inf)] = now + self.config.cooldown_s
        else:
            job, worker.pending = worker.pending, -1
            self._start(job, worker, m, res, now)
        self._fill(worker, m, res, now)
        if self.policy != "herd":
            self._offer_load(worker, now)

    def _load_failed(self, worker: _Worker, m: int, now: float) -> None:
        worker.loading = -1
        self.loads_now[m] -= 1
        job, worker.pending = worker.pending, -1
        self.wait[job] = now - self.work.arrival[job]
        self.outcome[job] = _FAILED
        self.resolved += 1
        self._offer_load(worker, now)

    # -- today: the first worker to claim -----------------------------------------------

    def _can_load(self, worker: _Worker) -> bool:
        return worker.loading < 0 and (
            len(worker.resident) < self.config.max_loaded or worker.idle > 0
        )

    def _claims(self, worker: _Worker, m: int) -> bool:
        """Whether ``worker`` would claim a job of ``m`` now: a free slot, or a load."""
        res = worker.resident.get(m)
        if res is not None:
            return res.busy < self.config.slots
        return m in worker.files and self._can_load(worker)

    def _claim_random(self, job: int, m: int, now: float) -> None:
        workers = self.workers
        rng = self.rng
        chosen = None
        for _ in range(64):
            candidate = workers[int(rng.random() * len(workers))]
            if self._claims(candidate, m):
                chosen = candidate
                break
        else:
            able = [w for w in workers if self._claims(w, m)]
            chosen = rng.choice(able) if able else None
        if chosen is None:
            self._enqueue(job, m)
            return
        res = chosen.resident.get(m)
        if res is not None:
            self._start(job, chosen, m, res, now)
        else:
            self._load_for_job(chosen, m, job, now)

    def _loader(self, m: int) -> _Worker | None:
        """A random worker that could load ``m`` now (today-warm, with no free slot)."""
        workers = self.workers
        for _ in range(64):
            candidate = workers[int(self.rng.random() * len(workers))]
            if m not in candidate.resident and self._claims(candidate, m):
                return candidate
        able = [w for w in workers if m not in w.resident and self._claims(w, m)]
        return self.rng.choice(able) if able else None

    def _load_for_job(self, worker: _Worker, m: int, job: int, now: float) -> None:
        while len(worker.resident) >= self.config.max_loaded:
            if not self._evict_one(worker):
                raise AssertionError("a worker claimed a load it has no room for")
        worker.pending = job
        fits = worker.used + self.needs[m] <= worker.total
        self._begin_load(worker, m, now, fits=fits)

    def _offer_load(self, worker: _Worker, now: float) -> None:
        """A worker that could load again claims the oldest job it could load for."""
        if not self.waiting or not self._can_load(worker):
            return
        best = None
        arrival = self.work.arrival
        for m in list(self.waiting):
            if m in worker.resident or m not in worker.files:
                continue
            queue = self._queue(m, now)
            if queue and (best is None or arrival[queue[0]] < arrival[self.queue[best][0]]):
                best = m
        if best is not None:
            queue = self.queue[best]
            job = queue.popleft()
            if not queue:
                self.waiting.discard(best)
            self._load_for_job(worker, best, job, now)

    # -- herd: placement ---------------------------------------------------------------

    def _held(self, m: int, now: float) -> int:
        """Live load tickets of ``m`` (loads running, or done within the cooldown)."""
        tickets = self.tickets[m]
        if tickets:
            tickets[:] = [t for t in tickets if t > now]
        return len(tickets)

    def _tick(self, now: float) -> None:
        for m in list(self.waiting):
            self._queue(m, now)  # drops what timed out
        if self.resolved < len(self.work):
            self._push(now + self.config.tick_s, _TICK, -1, -1)
        if self.policy != "herd":
            return
        held = {self.names[m]: n for m in range(len(self.names)) if (n := self._held(m, now))}
        demand = {}
        decide = self.every_tick
        arrival = self.work.arrival
        for m in self.waiting:
            queue = self.queue[m]
            name = self.names[m]
            wants = Demand(len(queue), now - arrival[queue[0]])
            demand[name] = wants
            if not decide:
                # plan() has work only for a model with no replica or a long queue (a fast
                # pre-check: --every-tick calls plan() anyway, with the same results)
                cold = self.holders[m] == 0 and name not in held
                decide = cold or wants.oldest_wait_s >= self.params.scale_out_wait_s
        if not decide:
            return
        nodes = [self._node(w, now) for w in self.workers]
        started = time.perf_counter()
        result = plan(nodes, demand, {}, held, self.params)
        self.count.plan_s += time.perf_counter() - started
        self.count.plan_calls += 1
        for load in result.loads:
            allowed = held.get(load.model, 0) + len(result.for_model(load.model))
            self._place(self.by_id[load.worker], self.index[load.model], load.evict, now, allowed)

    def _node(self, worker: _Worker, now: float) -> Node:
        names = self.names
        needs = self.needs
        keep_alive = self.config.keep_alive_s
        return Node(
            id=worker.id,
            memory_total=worker.total,
            memory_free=worker.total - worker.used,
            servable=worker.servable,
            replicas={
                names[m]: Replica(
                    res.busy,
                    needs[m],
                    idle_s=0.0 if res.busy else now - res.idle_since,
                    expires_in_s=keep_alive - (0.0 if res.busy else now - res.idle_since),
                    slots=self.config.slots,
                )
                for m, res in worker.resident.items()
            },
            loading={names[worker.loading]} if worker.loading >= 0 else set(),
            max_loaded=self.config.max_loaded,
        )

    def _place(
        self, worker: _Worker, m: int, evict: Sequence[str], now: float, allowed: int
    ) -> None:
        """``Placer._load`` and ``Residency.place``: the ticket (refused when the model
        holds ``allowed`` already), the evictions the plan named (those still idle, until
        the model fits), the load."""
        if self._held(m, now) >= min(allowed, self.config.tickets):
            return  # the loads planned are under way
        self.tickets[m].append(math.inf)
        need = self.needs[m]
        for name in evict:
            if self._room(worker, need):
                break
            victim = self.index[name]
            res = worker.resident.get(victim)
            if res is not None and not res.busy:
                self._unload(worker, victim)
                self.count.evictions += 1
        if not self._room(worker, need):
            self.tickets[m].remove(math.inf)  # no room after all: given back at once
            self.count.no_room += 1
            return
        self._begin_load(worker, m, now, fits=True)

    def _room(self, worker: _Worker, need: int) -> bool:
        return len(worker.resident) < self.config.max_loaded and worker.used + need <= worker.total

    # -- the figures -------------------------------------------------------------------

    def _summary(self, elapsed: float) -> Result:
        assert _PENDING not in self.outcome, "a job was neither run nor counted"
        first = bisect.bisect_left(self.work.arrival, self.config.warmup_s)
        outcome = self.outcome[first:]
        waits = sorted(w for w, o in zip(self.wait[first:], outcome, strict=True) if o != _FAILED)
        result = Result(
            **vars(self.count),
            policy=self.policy,
            jobs=len(outcome),
            completed=outcome.count(_STARTED),
            failed=outcome.count(_FAILED),
            timed_out=outcome.count(_TIMED_OUT),
            oversubscribed=self.oversubscribed,
            double_loads=self.double_loads,
            sim_s=elapsed,
        )
        if waits:
            result.wait_p50 = percentile(waits, 50)
            result.wait_p99 = percentile(waits, 99)
            result.wait_max = waits[-1]
        total = sum(w.total for w in self.workers)
        result.memory_util = self.used_area / self.config.duration_s / total
        result.slot_util = self.busy_area / self.slots_area if self.slots_area else 0.0
        return result


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of sorted values."""
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def simulate(
    config: Config, policies: Sequence[Policy] = POLICIES[:2], *, every_tick: bool = False
) -> list[Result]:
    cluster, workload = build(config)
    return [
        Simulation(config, cluster, workload, policy, every_tick=every_tick).run()
        for policy in policies
    ]


# -- report ------------------------------------------------------------------------------

_ROWS: tuple[tuple[str, str], ...] = (
    ("jobs", "jobs"),
    ("completed", "completed"),
    ("failed", "failed (out of memory)"),
    ("timed_out", "timed out (queue_timeout)"),
    ("loads", "loads"),
    ("failed_loads", "loads failed (did not fit)"),
    ("max_parallel_loads", "most loads of one model at once"),
    ("evictions", "evictions"),
    ("no_room", "loads given up (no room after all)"),
    ("expired", "unloads after keep_alive"),
    ("wait_p50", "queue wait p50 (s)"),
    ("wait_p99", "queue wait p99 (s)"),
    ("wait_max", "queue wait max (s)"),
    ("memory_util", "GPU memory utilisation (mean)"),
    ("slot_util", "slots of loaded replicas in use (mean)"),
    ("oversubscribed", "loads past a worker's memory"),
    ("double_loads", "loads on a worker already loading"),
)


def _cell(key: str, value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1%}" if key.endswith("_util") else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(results: Sequence[Result], *, markdown: bool = False) -> str:
    header = ["", *(r.policy for r in results)]
    rows = [[label, *(_cell(key, getattr(r, key)) for r in results)] for key, label in _ROWS]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(results) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        out.append("  ".join(cells))
    return "\n".join(out)


def describe(config: Config, cluster: Cluster, workload: Workload) -> str:
    """The run's parameters and what the workload asks of the cluster."""
    gib = sum(cluster.memory) / GIB
    busy = sum(workload.service) / (config.warmup_s + config.duration_s)
    needs = sorted(m.need / GIB for m in cluster.models)
    gpus = ", ".join(f"{g} GiB x {s:.0%}" for g, s in config.gpus)
    capped = config.tickets != Config().tickets
    tickets = f", at most {config.tickets} loads of a model at once" if capped else ""
    return (
        f"{config.workers} workers ({gpus}; {config.memory_fraction:.0%} for models: "
        f"{gib:,.0f} GiB), max_loaded {config.max_loaded}, {config.slots} slots per replica; "
        f"{config.models} models ({needs[0]:.1f}-{needs[-1]:.1f} GiB loaded, median "
        f"{needs[len(needs) // 2]:.1f}), files on {config.file_share:.0%} of the workers; "
        f"{config.rate:g} jobs/s, Zipf s={config.zipf_s:g}, ranking drawn afresh every "
        f"{config.shift_s:.0f} s, {config.tokens_mean:.0f} tokens mean: {busy:,.0f} sequences "
        f"running on average; {config.warmup_s:.0f} s warm-up, then {config.duration_s:.0f} s "
        f"counted; load {config.load_gb_s:g} GB/s + {config.load_overhead_s:g} s, keep_alive "
        f"{config.keep_alive_s:.0f} s, tick {config.tick_s:g} s, scale_out_wait "
        f"{config.scale_out_wait_s:g} s, cooldown {config.cooldown_s:g} s{tickets}, "
        f"queue_timeout {config.queue_timeout_s:.0f} s; seed {config.seed}"
    )


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.placement",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = Config()
    parser.add_argument("--quick", action="store_true", help="100 workers, 20 models, 15 min")
    parser.add_argument("--markdown", action="store_true", help="the table as Markdown")
    parser.add_argument("--all", action="store_true", help="today-warm too")
    parser.add_argument(
        "--every-tick", action="store_true", help="call plan() at every tick (slower)"
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--workers", type=int, help=f"default {d.workers}")
    parser.add_argument("--models", type=int, help=f"default {d.models}")
    parser.add_argument("--rate", type=float, help=f"jobs/s (default {d.rate:g})")
    parser.add_argument("--warmup", type=float, help=f"seconds (default {d.warmup_s:g})")
    parser.add_argument("--duration", type=float, help=f"seconds (default {d.duration_s:g})")
    parser.add_argument("--shift", type=float, help=f"seconds (default {d.shift_s:g})")
    parser.add_argument("--zipf", type=float, default=d.zipf_s)
    parser.add_argument("--slots", type=int, default=d.slots)
    parser.add_argument("--max-loaded", type=int, default=d.max_loaded)
    parser.add_argument("--tokens", type=float, default=d.tokens_mean)
    parser.add_argument("--keep-alive", type=float, default=d.keep_alive_s)
    parser.add_argument("--cooldown", type=float, default=d.cooldown_s)
    parser.add_argument("--scale-out-wait", type=float, default=d.scale_out_wait_s)
    parser.add_argument(
        "--tickets", type=int, default=d.tickets, help="what if: cap loads of one model at once"
    )
    parser.add_argument("--tick", type=float, default=d.tick_s)
    parser.add_argument("--queue-timeout", type=float, default=d.queue_timeout_s)
    parser.add_argument("--file-share", type=float, default=d.file_share)
    return parser.parse_args()


def main() -> None:
    args = _args()
    config = Config().quick() if args.quick else Config()
    overrides = {
        "workers": args.workers,
        "models": args.models,
        "rate": args.rate,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "shift_s": args.shift,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    config = replace(
        config,
        seed=args.seed,
        zipf_s=args.zipf,
        slots=args.slots,
        max_loaded=args.max_loaded,
        tokens_mean=args.tokens,
        keep_alive_s=args.keep_alive,
        cooldown_s=args.cooldown,
        scale_out_wait_s=args.scale_out_wait,
        tickets=args.tickets,
        tick_s=args.tick,
        queue_timeout_s=args.queue_timeout,
        file_share=args.file_share,
    )
    cluster, workload = build(config)
    policies = POLICIES if args.all else POLICIES[:2]
    results = [
        Simulation(config, cluster, workload, p, every_tick=args.every_tick).run() for p in policies
    ]
    print(describe(config, cluster, workload))
    print()
    print(table(results, markdown=args.markdown))
    print()
    for r in results:
        extra = f"; plan() {r.plan_calls:,} calls, {r.plan_s:.1f} s" if r.plan_calls else ""
        print(f"{r.policy}: simulated in {r.sim_s:.1f} s{extra}")


if __name__ == "__main__":
    main()
