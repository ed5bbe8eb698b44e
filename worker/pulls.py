"""Model pulls: an arq worker inside ``herd worker`` (one whose store it can write).

The API enqueues ``pull_model(name, insecure, run)`` on ``keys.PULL_QUEUE`` with the job id
``keys.pull_job_id(model)``, so a model has one pull at a time in the cluster. Any worker
with a writable ``HERD_MODELS_DIR`` may take it: the manifest from the registry, then each
layer the store lacks (``shared.registry.download``; one download of a blob at a time in the
cluster, ``shared.registry.lock``), then the manifest, and the store's version bumped so
every worker rescans. Progress goes out as Ollama's lines (``shared.registry.progress``).

A network failure retries the job with backoff (``Retry``: it resumes from the partial
files); a worker stopped mid-pull hands it back to arq, which runs it again elsewhere, and
one killed outright loses its claim within ``HERD_PULL_LEASE_S`` (``_hold_lease``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Retry, func
from arq.worker import Worker as ArqWorker
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys, names, tasks
from shared.redis import connect
from shared.registry.client import PullFailed, Remote, Transient, fetch_manifest, remote
from shared.registry.download import Counter, download, partial_progress
from shared.registry.lock import BlobLock
from shared.registry.progress import FUNCTION, Reporter
from shared.settings import Settings
from shared.store import Layer, Store
from shared.store.manifest import MAX_METADATA_BYTES, METADATA_TYPES
from shared.store.notify import bump_store_version

log = structlog.get_logger()

#: A pull longer than this fails. (arq would hold a job this long, plus 10 s, if its worker
#: were killed without a chance to hand it back: ``_hold_lease`` makes that a minute.)
JOB_TIMEOUT_S = 6 * 3600
#: Tries of a pull that meets network errors (each resumes the partial files).
MAX_TRIES = 5
#: arq polls its queue: a pull starts within about this.
POLL_DELAY_S = 0.5
#: Pulls one worker runs at once.
MAX_JOBS = 4
#: arq's health key (which tells the API some worker runs pulls) is refreshed this often.
HEALTH_EVERY_S = 10
#: Progress lines of a layer come about this often.
REPORT_EVERY_S = 0.1
#: A layer's line is sent again after this long without one (its sha256 being checked, a
#: stalled connection): a follower knows the pull is alive.
KEEPALIVE_S = 10.0


#: Redis out of reach (a restart, a failover): the try ends, the pull is retried.
REDIS_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)
RETRIED: tuple[type[Exception], ...] = (Transient, *REDIS_DOWN)


def retry_delay_s(job_try: int) -> int:
    return int(min(60, 2**job_try))


@dataclass
class Deps:
    """What a pull needs, shared by the pulls of one worker (arq's ``ctx["pulls"]``)."""

    settings: Settings
    store: Store
    redis: Redis
    http: httpx.AsyncClient
    #: Called once a pulled model is in the store: this worker serves it before the
    #: client hears ``success`` (``ollama pull x && ollama run x`` works at once).
    on_stored: Callable[[], Awaitable[None]] | None = None


async def pull_model(ctx: dict[str, Any], name: str, insecure: bool = False, run: str = "") -> str:
    """arq's job: pull ``name`` into the store, reporting every step; the outcome."""
    deps: Deps = ctx["pulls"]
    model = names.normalize(name)
    reporter = Reporter(deps.redis, model, run)
    lease = asyncio.create_task(_hold_lease(deps, str(ctx.get("job_id", ""))))
    try:
        return await _run(ctx, deps, name, model, insecure, reporter)
    finally:
        await tasks.stop(lease)


async def _hold_lease(deps: Deps, job_id: str) -> None:
    """Keep arq's in-progress key of this job alive for ``pull_lease_s`` at a time.

    arq sets it for the job's whole timeout (hours) and no worker starts the job while it
    exists: a worker killed mid-pull would block the model's pulls (and hang its
    followers) that long. Renewed while this worker lives, it lapses soon after it dies,
    and another worker takes the job over (the next try, the same run token)."""
    if not job_id:
        return
    key = in_progress_key_prefix + job_id
    lease_ms = int(deps.settings.pull_lease_s * 1000)
    while True:
        try:
            await deps.redis.pexpire(key, lease_ms)  # a no-op once arq removed the key
        except Exception as exc:  # Redis away: the next renewal may reach it
            log.warning("pull_lease_renew_failed", job_id=job_id, error=str(exc))
        await asyncio.sleep(deps.settings.pull_lease_s / 3)


async def _run(
    ctx: dict[str, Any], deps: Deps, name: str, model: str, insecure: bool, reporter: Reporter
) -> str:
    try:
        # a retry goes on with the same lines: the client saw "pulling manifest" already
        first = int(ctx.get("job_try", 1)) == 1
        await _pull(deps, name, model, insecure=insecure, reporter=reporter, first=first)
    except RETRIED as exc:  # Redis too: a failover ends this try only
        job_try = int(ctx.get("job_try", 1))
        if job_try < MAX_TRIES:
            log.warning("pull_retry", model=model, job_try=job_try, error=str(exc))
            raise Retry(defer=retry_delay_s(job_try)) from exc
        with contextlib.suppress(*REDIS_DOWN):
            await reporter.send({"error": str(exc) or type(exc).__name__})
        return "failed"
    except PullFailed as exc:
        log.warning("pull_failed", model=model, error=str(exc))
        await reporter.send({"error": str(exc)})
        return "failed"
    except Exception as exc:  # a bug still ends the client's stream with one error line
        log.exception("pull_crashed", model=model)
        await reporter.send({"error": f"internal error: {type(exc).__name__}"})
        return "failed"
    return "success"


async def _pull(
    deps: Deps, name: str, model: str, *, insecure: bool, reporter: Reporter, first: bool
) -> None:
    if first:
        await reporter.send({"status": "pulling manifest"})
    where = remote(name, insecure=insecure)
    manifest = await fetch_manifest(deps.http, where)
    # the config last, as Ollama lists it; every size checked before any download
    layers = [*manifest.layers, manifest.config]
    for layer in layers:
        if layer.size > deps.settings.max_blob_bytes:
            raise PullFailed(
                f"layer {layer.digest} is larger than the store allows "
                f"({deps.settings.max_blob_bytes} bytes)"
            )
        if layer.media_type in METADATA_TYPES and layer.size > MAX_METADATA_BYTES:
            # read whole by every worker: a huge one would fill their memory
            raise PullFailed(
                f"layer {layer.digest} ({layer.media_type}) is larger than "
                f"{MAX_METADATA_BYTES} bytes"
            )
    for layer in layers:
        await _layer(deps, where, layer, reporter)
    # each blob was verified as it was committed (never visible unverified)
    await reporter.send({"status": "verifying sha256 digest"})
    await reporter.send({"status": "writing manifest"})
    # the previous version's blobs that no model names any more go, as with Ollama
    try:
        removed = await asyncio.to_thread(deps.store.replace_manifest, model, manifest)
    except FileNotFoundError as exc:  # a delete took a blob no manifest named yet: fetch again
        raise Transient(f"write manifest: {exc}") from exc
    if removed:
        await reporter.send({"status": "removing unused layers"})
    async with deps.redis.pipeline(transaction=True) as pipe:
        # the name is a model of the store again: no older alias or deletion shadows it
        pipe.hdel(keys.CATALOG_ALIASES, model)
        pipe.srem(keys.CATALOG_DELETED, model)
        # where it came from: a worker with a store of its own can pull it too (``fetch``)
        pipe.hset(keys.STORE_SOURCES, model, orjson.dumps({"insecure": insecure}).decode())
        await pipe.execute()
    await bump_store_version(deps.redis)  # every worker rescans its store
    if deps.on_stored is not None:
        await deps.on_stored()
    log.info("pull_done", model=model, size=manifest.size())
    await reporter.send({"status": "success"})


async def _layer(deps: Deps, where: Remote, layer: Layer, reporter: Reporter) -> None:
    store, digest = deps.store, layer.digest
    hex_digest = digest.partition(":")[2]

    async def report(done: int) -> None:
        await reporter.send(
            {
                "status": f"pulling {hex_digest[:12]}",
                "digest": digest,
                "total": layer.size,
                "completed": done,
            }
        )

    while not store.has_blob(digest):
        lock = BlobLock(deps.redis, digest)
        if not await lock.acquire():
            # another pull is fetching this blob: show its progress, take over if it stops
            await report(partial_progress(store, digest))
            await asyncio.sleep(REPORT_EVERY_S * 2)
            continue
        async with lock.held():
            if not store.has_blob(digest):  # it may have finished just before
                await _download(deps, where, layer, report)
    await report(layer.size)


async def _download(deps: Deps, where: Remote, layer: Layer, report: Any) -> None:
    counter = Counter()
    started = time.monotonic()
    task = asyncio.create_task(
        download(
            deps.http,
            where.blob_url(layer.digest),
            layer.digest,
            layer.size,
            deps.store,
            parallel=deps.settings.pull_parallel,
            counter=counter,
        )
    )
    try:
        last, sent = -1, time.monotonic()
        while not task.done():
            await asyncio.wait({task}, timeout=REPORT_EVERY_S)
            if task.done():
                break
            if counter.completed != last or time.monotonic() - sent >= KEEPALIVE_S:
                last, sent = counter.completed, time.monotonic()
                await report(last)
        task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    seconds = time.monotonic() - started
    log.info(
        "pull_blob_done",
        digest=layer.digest,
        size=layer.size,
        fetched=counter.fetched,
        seconds=round(seconds, 3),
        mb_per_s=round(counter.fetched / max(seconds, 1e-6) / 1e6, 1),
    )


class _Quiet(Reporter):
    """A reporter that publishes nothing: a fetch has no client following it."""

    def __init__(self) -> None:
        pass

    async def send(self, line: dict[str, Any]) -> None:
        return None


async def fetch(settings: Settings, root: Path, redis: Redis, model: str, insecure: bool) -> None:
    """Pull ``model`` into the store at ``root`` in this process, as a pull job would,
    reporting to no one (placement has this worker load a model another one pulled)."""
    timeout = httpx.Timeout(30.0, read=60.0)
    async with httpx.AsyncClient(follow_redirects=True, timeout=timeout) as http:
        deps = Deps(settings, Store(root), redis, http)
        await _pull(deps, model, model, insecure=insecure, reporter=_Quiet(), first=True)


def writable_store(settings: Settings) -> Path | None:
    """The store this worker can pull into: ``HERD_MODELS_DIR`` if set and writable."""
    root = settings.models_dir
    if root is None:
        return None
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
    return root if root.is_dir() and os.access(root, os.W_OK | os.X_OK) else None


class Pulls:
    """The arq worker of a ``herd worker`` process, as a background task."""

    def __init__(
        self,
        settings: Settings,
        root: Path,
        on_stored: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # a client of its own, built like every other (Sentinel included: its pool asks the
        # Sentinels for the master on each new connection, so arq follows a failover too)
        self._redis = connect(settings)
        self._http = httpx.AsyncClient(
            follow_redirects=True, timeout=httpx.Timeout(30.0, read=60.0)
        )
        deps = Deps(settings, Store(root), self._redis, self._http, on_stored)
        self._arq = ArqWorker(
            functions=[
                func(
                    pull_model,
                    name=FUNCTION,
                    timeout=JOB_TIMEOUT_S,
                    max_tries=MAX_TRIES,
                    keep_result=0,  # dedup lasts while queued or running, no longer
                )
            ],
            queue_name=keys.PULL_QUEUE,
            redis_pool=ArqRedis(pool_or_conn=self._redis.connection_pool),
            # the worker's default too: arq keeps a failed job's result by it (max tries
            # exceeded), and a kept result would refuse the model's next pull
            keep_result=0,
            handle_signals=False,  # `herd worker` owns SIGTERM; stop() hands jobs back
            max_jobs=MAX_JOBS,
            poll_delay=POLL_DELAY_S,
            # the API answers 503 at once while no worker refreshes this key
            health_check_interval=HEALTH_EVERY_S,
            ctx={"pulls": deps},
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pulls")

    async def _run(self) -> None:
        # arq's poll loop ends on a Redis error it does not expect: start it again
        while True:
            try:
                await self._arq.async_run()
                return
            except Exception:
                log.exception("pulls_poll_failed")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Stop polling; a running pull is cancelled, and arq runs it again (elsewhere)."""
        with contextlib.suppress(Exception):
            await self._arq.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._http.aclose()
        await self._redis.aclose()


def start_pulls(
    settings: Settings, on_stored: Callable[[], Awaitable[None]] | None = None
) -> Pulls | None:
    """Run pulls here if this worker can write a store; None otherwise."""
    root = writable_store(settings)
    if root is None:
        return None
    pulls = Pulls(settings, root, on_stored)
    pulls.start()
    log.info("pulls_started", models_dir=str(root))
    return pulls
