"""Which models are resident on this worker, and for how long (Ollama's scheduler, per worker).

- A job ``use``s its model: if it is not loaded, or loaded with other load-time options
  (``job.load``), it is loaded first (``engine.load``, which also reloads, once the
  model's running jobs are done). Loads and unloads run one at a time (a lock), so
  concurrent jobs of a model wait for its one load; a job of a loaded model never waits.
- At most ``max_loaded`` models stay resident, and together they take no more than the
  memory ``budget`` (each model's ``engine.memory_required`` for its options). To make
  room, the idle model whose expiry comes first is unloaded; a busy one never is: the
  loader waits until one goes idle, and the model to go (the one with the shortest
  keep_alive) takes no new jobs meanwhile, so a steady stream of them cannot starve the
  load. A model larger than the whole budget fails at once (``InsufficientMemory``).
- Placement (``worker.placement``) loads models ahead of their jobs with ``place`` (which
  only evicts idle models, and never waits), and names the models ``keep`` holds for
  their replica policy: those never expire and are never evicted.
- keep_alive: every model has a session duration, set by each job that gives one (a job
  that gives none keeps the current one; a fresh load starts from the default). When the
  last job ends the model expires after that duration: 0 unloads at once, ``FOREVER``
  never. ``expire`` (the control stream's unload) sets it to 0.
- Models the engine preloaded in ``start`` are adopted with the default keep_alive, like a
  model a request without ``keep_alive`` loaded: the default model unloads when idle that
  long, and loads again on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from shared.durations import FOREVER
from shared.errors import InsufficientMemory
from shared.messages import LoadedModel, LoadOptions
from worker.engine import Engine

log = structlog.get_logger()

#: What Ollama shows as the expiry of a model kept forever (``math.MaxInt64`` ns ahead).
FOREVER_AHEAD = timedelta(microseconds=(2**63 - 1) // 1000)


def session_seconds(wire: float | None) -> float | None:
    """A job's ``keep_alive_s`` in seconds: negative on the wire means ``FOREVER``."""
    if wire is None:
        return None
    return FOREVER if wire < 0 else wire


@dataclass(eq=False)
class _Resident:
    name: str
    options: LoadOptions
    duration: float
    busy: int = 0
    idle_since: float = field(default_factory=time.time)
    #: Bumped whenever a job attaches: a pending expiry of an older idle period is void.
    epoch: int = 0
    #: Chosen to make room (or to reload): new jobs wait for the lock instead of attaching.
    closing: bool = False
    #: Its file changed (a re-pull, a re-create): the next job loads the new one once the
    #: answers running on this copy finish, replica policy or not.
    stale: bool = False
    #: What it takes of the budget (``engine.memory_required`` for its options).
    memory: int = 0
    timer: asyncio.TimerHandle | None = None
    #: An advert written since it loaded shows it (``mark_advertised``).
    advertised: bool = False

    def expiry(self, now: float) -> float:
        """Unix time this model unloads (now + duration while busy); inf for forever."""
        return (now if self.busy else self.idle_since) + max(0.0, self.duration)


class Residency:
    def __init__(
        self,
        engine: Engine,
        *,
        max_loaded: int,
        default_keep_alive_s: float,
        on_change: Callable[[], None] = lambda: None,
        budget: Callable[[], int] | None = None,
        claimed: Callable[[str], int] = lambda name: 0,
        on_loaded: Callable[[str, float], None] = lambda name, seconds: None,
    ) -> None:
        self._engine = engine
        self._max = max_loaded
        self._budget = budget
        #: Jobs of a model claimed here and not ended (some not attached yet): while there
        #: are any, it is not idle, whatever ``busy`` says.
        self._claimed = claimed
        #: Models held loaded for their replica policy.
        self._kept: set[str] = set()
        #: Models being loaded now.
        self.loading: set[str] = set()
        self._default = default_keep_alive_s
        self._on_change = on_change
        #: Told each load's model and seconds (``herd_model_load_seconds``).
        self._on_loaded = on_loaded
        self._models: dict[str, _Resident] = {}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def adopt_preloaded(self) -> None:
        """Take over what ``engine.start`` loaded, as loaded with the default keep_alive."""
        for model in self._engine.loaded():
            if model.name not in self._models:
                options = self._engine.effective_options(model.name, LoadOptions())
                entry = _Resident(model.name, options, self._default)
                entry.memory = self._engine.memory_required(model.name, options)
                self._models[model.name] = entry
                self._schedule_expiry(entry)

    @contextlib.asynccontextmanager
    async def use(
        self, name: str, options: LoadOptions, keep_alive_s: float | None = None
    ) -> AsyncIterator[bool]:
        """Hold ``name`` loaded (with ``options``) for the body, which gets whether no
        advert shows it yet (this loaded it, or placement did since the last advert);
        ``keep_alive_s`` as on the wire (None: unchanged; negative: forever)."""
        duration = session_seconds(keep_alive_s)
        # compared in effect: an explicit default is not a change (and costs no reload)
        options = self._engine.effective_options(name, options)
        entry = self._models.get(name)
        if entry is not None and not (entry.closing or entry.stale) and entry.options == options:
            self._attach(entry, duration)
            fresh = not entry.advertised
        else:
            entry, fresh = await self._load(name, options, duration)
        try:
            yield fresh
        finally:
            self._release(entry)

    def replaced(self, name: str) -> None:
        """``name``'s file changed: running answers finish on the loaded copy, and the next
        job swaps it for the new file. The copy stays until then, so this worker keeps
        claiming the model's jobs (unloaded, it would wait for placement and its cooldown)."""
        entry = self._models.get(name)
        if entry is not None:
            entry.stale = True

    def expire(self, name: str) -> None:
        """Unload ``name`` once idle (now, if it is), like a request with keep_alive 0."""
        entry = self._models.get(name)
        if entry is not None:
            entry.duration = 0.0
            if not entry.busy:
                self._schedule_expiry(entry)

    def loaded(self) -> list[LoadedModel]:
        """The resident models for the advert (/api/ps), with expiry and busy count."""
        now = time.time()
        engine_view = {m.name: m for m in self._engine.loaded()}
        adverts = {m.name: m for m in self._engine.models()}
        listed = []
        for entry in self._models.values():
            base = engine_view.get(entry.name)
            if base is None:
                advert = adverts.get(entry.name)
                base = LoadedModel(
                    name=entry.name,
                    size_bytes=advert.size_bytes if advert else 0,
                    context_length=entry.options.num_ctx
                    or (advert.context_length if advert else 0),
                    expires_at="",
                )
            listed.append(
                base.model_copy(
                    update={
                        "expires_at": _rfc3339(entry.expiry(now)),
                        "busy": entry.busy,
                        "idle_s": self.idle_s(entry.name),
                    }
                )
            )
        return listed

    def resident(self) -> list[str]:
        return list(self._models)

    @property
    def max_loaded(self) -> int:
        return self._max

    def used(self) -> int:
        """Memory the resident models take, by estimate."""
        return sum(entry.memory for entry in self._models.values())

    def busy(self, name: str) -> int:
        entry = self._models.get(name)
        return entry.busy if entry is not None else 0

    def expires_in_s(self, name: str) -> float:
        """Seconds until ``name`` unloads if no job comes (inf: forever, or not loaded)."""
        entry = self._models.get(name)
        return math.inf if entry is None else entry.expiry(time.time()) - time.time()

    def idle_s(self, name: str) -> float:
        """Seconds since the last job of ``name`` ended (0 while one runs)."""
        entry = self._models.get(name)
        if entry is None or entry.busy:
            return 0.0
        return max(0.0, time.time() - entry.idle_since)

    def kept(self) -> set[str]:
        return set(self._kept)

    def keep(self, models: set[str]) -> None:
        """Hold exactly ``models`` loaded for their replica policy; a model let go expires
        after its keep_alive from now, if idle."""
        released = self._kept - models
        self._kept = set(models)
        for name in released:
            entry = self._models.get(name)
            if entry is not None and not entry.busy:
                entry.idle_since = time.time()
                self._schedule_expiry(entry)

    async def place(self, name: str, evict: Sequence[str] = ()) -> bool:
        """Load ``name`` with default options, if it is not loaded, after unloading the
        ``evict`` models (placement's choice; only those still idle); False, at once, if
        that does not make room."""
        options = self._engine.effective_options(name, LoadOptions())
        async with self._lock:
            if name in self._models:
                return True
            need = self._engine.memory_required(name, options)
            for victim in evict:
                if self._room(need):
                    break
                entry = self._models.get(victim)
                if entry is not None and self._evictable(entry):
                    await self._unload(entry, reason="evicted")
            if not self._room(need):
                return False
            entry = await self._load_now(name, options)
            self._schedule_expiry(entry)  # a job may never come: keep_alive counts from now
            return True

    def mark_advertised(self, names: Sequence[str]) -> None:
        """An advert listing ``names`` as loaded was written."""
        for name in names:
            entry = self._models.get(name)
            if entry is not None:
                entry.advertised = True

    def serving(self, name: str) -> bool:
        """Whether ``name`` is loaded and takes new jobs (it is not about to go)."""
        entry = self._models.get(name)
        return entry is not None and not entry.closing

    def _evictable(self, entry: _Resident) -> bool:
        idle = not entry.busy and not self._claimed(entry.name)
        return idle and entry.name not in self._kept

    def _room(self, need: int, replacing: _Resident | None = None) -> bool:
        """Whether a model taking ``need`` fits beside the resident ones (less ``replacing``)."""
        others = [e for e in self._models.values() if e is not replacing]
        if len(others) >= self._max:
            return False
        if self._budget is None:
            return True
        return sum(e.memory for e in others) + need <= self._budget()

    def _check_fits_at_all(self, name: str, need: int) -> None:
        budget = self._budget() if self._budget is not None else None
        if budget is not None and need > budget:
            raise InsufficientMemory(
                f"model '{name}' requires more memory ({_gib(need)}) than this worker "
                f"has for models ({_gib(budget)})"
            )

    async def close(self) -> None:
        for entry in self._models.values():
            if entry.timer is not None:
                entry.timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- jobs attach and release -------------------------------------------------------

    def _attach(self, entry: _Resident, duration: float | None) -> None:
        entry.busy += 1
        entry.epoch += 1
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if duration is not None:
            entry.duration = duration

    def _release(self, entry: _Resident) -> None:
        entry.busy -= 1
        if entry.busy == 0:
            entry.idle_since = time.time()
            if self._models.get(entry.name) is entry:
                self._schedule_expiry(entry)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _schedule_expiry(self, entry: _Resident) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        epoch = entry.epoch
        if entry.duration <= 0:
            self._spawn(self._expire(entry, epoch))
        elif not math.isinf(entry.duration):
            entry.timer = asyncio.get_running_loop().call_later(
                entry.duration, lambda: self._spawn(self._expire(entry, epoch))
            )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, entry: _Resident, epoch: int) -> None:
        async with self._lock:
            # a job may have come (and gone) while this waited: then it is not expired
            current = self._models.get(entry.name) is entry and entry.epoch == epoch
            if current and not entry.busy and entry.name not in self._kept:
                await self._unload(entry, reason="expired")

    # -- loading and eviction (under the lock) -----------------------------------------

    async def _load(
        self, name: str, options: LoadOptions, duration: float | None
    ) -> tuple[_Resident, bool]:
        async with self._lock:
            need = self._engine.memory_required(name, options)
            self._check_fits_at_all(name, need)
            while True:
                changed = self._changed  # taken before the checks: no wake-up is lost
                entry = self._models.get(name)
                if entry is not None and entry.stale:
                    if not entry.busy:  # its file changed: this load reads the new one
                        await self._unload(entry, reason="replaced")
                        continue
                    entry.closing = True
                    await changed.wait()
                    continue
                if entry is not None and entry.options == options:
                    break  # loaded meanwhile
                if entry is not None and entry.busy:  # other options: reload once idle
                    entry.closing = True
                elif self._room(need, replacing=entry):
                    break
                elif await self._evict_one(spare=entry):
                    continue
                await changed.wait()
            fresh = entry is None or entry.options != options
            for other in self._models.values():
                # a model being reloaded takes no new jobs until its new copy is in place
                other.closing = other is entry and fresh
            if fresh:
                # a reload goes through engine.load too: it knows which options differ
                # in effect (an explicit default is no change) and swaps the model
                entry = await self._load_now(name, options)
            assert entry is not None
            self._attach(entry, duration)
            return entry, fresh

    async def _load_now(self, name: str, options: LoadOptions) -> _Resident:
        old = self._models.get(name)
        started = time.perf_counter()
        self.loading.add(name)
        self._on_change()
        try:
            await self._engine.load(name, options)
        finally:
            self.loading.discard(name)
            self._on_change()
        if old is not None and old.timer is not None:
            old.timer.cancel()
        entry = _Resident(name, options, self._default)
        entry.memory = self._engine.memory_required(name, options)
        self._models[name] = entry
        seconds = time.perf_counter() - started
        self._on_loaded(name, seconds)
        log.info(
            "model_resident",
            model=name,
            seconds=round(seconds, 3),
            resident=len(self._models),
            memory=entry.memory,
        )
        return entry

    async def _evict_one(self, spare: _Resident | None = None) -> bool:
        """Unload the idle model expiring first (not ``spare``, nor a kept one); False if
        none is idle, and then the one with the shortest session takes no new jobs."""
        now = time.time()
        others = [e for e in self._models.values() if e is not spare]
        idle = [e for e in others if self._evictable(e)]
        if idle:
            victim = min(idle, key=lambda e: (e.expiry(now), e.name))
            await self._unload(victim, reason="evicted")
            return True
        # all busy: the one with the shortest session takes no new jobs until it drains
        candidates = [e for e in others if e.name not in self._kept]
        if candidates:
            shortest = min(candidates, key=lambda e: (e.duration, e.name))
            shortest.closing = True
        return False

    async def _unload(self, entry: _Resident, *, reason: str) -> None:
        del self._models[entry.name]
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        try:
            await self._engine.unload(entry.name)
        except Exception:  # the model is gone from our books either way
            log.exception("model_unload_failed", model=entry.name)
        log.info("model_unloaded", model=entry.name, reason=reason)
        self._on_change()
        self._notify()


def _rfc3339(unix: float) -> str:
    """Server-local time with its offset, as Ollama writes ``expires_at``."""
    now = datetime.now().astimezone()
    if unix - now.timestamp() >= FOREVER_AHEAD.total_seconds():
        return (now + FOREVER_AHEAD).isoformat()
    return datetime.fromtimestamp(unix).astimezone().isoformat()


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
