"""Step 2 of a request: sending its job to the workers (``api.relay`` brings its events back).

``Dispatcher.submit`` subscribes to the request's token channel (``api.tokens``) *before*
it XADDs the job (pub/sub does not buffer), and on exit unsubscribes and, unless the job
finished, marks it cancelled, so a job still queued is never run and a running one stops
(its worker sees no subscriber on the channel).

Prefix-aware routing: a chat whose earlier turns a worker answered (``shared.prefix``) goes
to that worker's own stream (``keys.worker_jobs``) when its advert shows the model loaded
with a free slot, so the conversation's prompt is found in its KV cache; not taken there
within ``relay.AFFINITY_WAIT_S``, or its worker gone before the first token, it moves to
the model's stream (one atomic script: never run twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.registry import Registry
from api.relay import Event, Relay
from api.tokens import TokenRouter
from shared import keys, prefix
from shared.errors import QUEUE_FULL, HerdError, Unavailable
from shared.messages import ChatMessage, DoneEvent, GenerateJob, StartedEvent

if TYPE_CHECKING:
    from api.metrics import ApiMetrics

log = structlog.get_logger()

#: What a 503 for a full queue tells clients (``Retry-After``): a slot frees within seconds.
QUEUE_FULL_RETRY_AFTER_S = 1

# XLEN counts queued and running jobs (workers delete an entry once it is done). Checking and
# adding in one script costs one round trip and keeps concurrent requests from overshooting.
# KEYS[2] is the conversation's owner key; KEYS[3..] the own streams of the workers that
# could take it now (ARGV[3..] their ids): the owner among them gets it. Returns
# {0} (queue full), {1} (model stream) or {2, worker, entry id}.
_ADMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return {0} end
if #KEYS > 2 then
  local owner = redis.call('GET', KEYS[2])
  for i = 3, #KEYS do
    if ARGV[i] == owner then
      return {2, owner, redis.call('XADD', KEYS[i], '*', 'job', ARGV[2])}
    end
  end
end
redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
return {1}
"""

# A routed job not taken by its worker (or taken by one now dead: ARGV[3] ~= '1') moves to
# the model's stream. 1: moved; 0: its worker has it, or it is gone (answered).
_MOVE = """
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entry == 0 then return 0 end
local pending = redis.call('XPENDING', KEYS[1], ARGV[2], ARGV[1], ARGV[1], 1)
if #pending > 0 then
  if ARGV[3] == '1' then return 0 end
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', unpack(entry[1][2]))
return 1
"""


class Dispatcher:
    def __init__(
        self,
        client: Redis,
        router: TokenRouter,
        registry: Registry,
        *,
        max_queue: int,
        check_interval_s: float,
        prefix_routing: bool = True,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._router = router
        self._registry = registry
        self._max_queue = max_queue
        self._check_interval_s = check_interval_s
        self._prefix_routing = prefix_routing
        self._admit = client.register_script(_ADMIT)
        self._move = client.register_script(_MOVE)
        self._remembering: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def submit(self, job: GenerateJob) -> AsyncIterator[AsyncIterator[Event]]:
        """Enqueue ``job``; yields its events (started, tokens, done) in order. A model
        that fits on none of the workers that serve it is refused (507) first."""
        await self._registry.check_room(job.model)
        channel = keys.token_channel(job.request_id)
        stream = keys.job_stream(job.model)
        queue = await self._router.subscribe(channel)
        relay = Relay(job, queue, self._registry, self._check_interval_s, self, self._metrics)
        admitted: list[Any] = [0]
        if self._metrics is not None:
            self._metrics.active_streams.inc()
        try:
            keys_ = [stream]
            args: list[bytes | str | int] = [self._max_queue, job.to_fields()["job"]]
            if self._prefix_routing and job.kind == "chat" and len(job.messages) > 1:
                owners = await self._registry.with_free_slot(job.model)
                keys_.append(keys.prefix_owner(prefix.digest(job.model, job.messages[:-1])))
                keys_ += [keys.worker_jobs(w) for w in owners]
                args += owners
            admitted = await self._admit(keys=keys_, args=args)
            if admitted[0] == 0:  # nothing was queued: nothing to cancel either
                raise Unavailable(QUEUE_FULL, retry_after_s=QUEUE_FULL_RETRY_AFTER_S)
            if admitted[0] == 2:
                relay.routed = (admitted[1].decode(), admitted[2].decode(), time.monotonic())
            yield relay.events()
        finally:
            if self._metrics is not None:
                self._metrics.active_streams.dec()
            # cleanup must run even while the request's task is being cancelled, and never
            # replace the request's own error (Redis may be what failed it)
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self._router.unsubscribe(channel)
                    if admitted[0] and not relay.finished:
                        key = keys.cancel_key(job.request_id)
                        await self._client.set(key, 1, ex=keys.CANCEL_TTL_S)
                except (RedisError, OSError) as exc:
                    log.warning("request_cleanup_failed", error=str(exc))

    async def move(self, job: GenerateJob, owner: str, entry_id: str, *, alive: bool) -> bool:
        """Move a routed job from its worker's stream to its model's (see ``_MOVE``)."""
        moved = await self._move(
            keys=[keys.worker_jobs(owner), keys.job_stream(job.model)],
            args=[entry_id, keys.JOB_GROUP, "1" if alive else "0"],
        )
        if moved:
            log.info("routed_job_moved", worker_id=owner, alive=alive)
        return bool(moved)

    def remember(self, job: GenerateJob, worker: str, answer: str) -> None:
        """Record ``worker`` as the holder of the conversation ``job`` continued with
        ``answer`` (in the background: the client has its answer already)."""
        if not (self._prefix_routing and job.kind == "chat"):
            return
        turn = [*job.messages, ChatMessage(role="assistant", content=answer)]
        key = keys.prefix_owner(prefix.digest(job.model, turn))

        async def write() -> None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.set(key, worker, ex=keys.PREFIX_TTL_S)

        task = asyncio.create_task(write())
        self._remembering.add(task)
        task.add_done_callback(self._remembering.discard)


def stamp(job: GenerateJob, queue_timeout_s: float) -> GenerateJob:
    """A fresh run of a checked job: its own job id (its token channel: never a client's
    choice), the request's id as the client sees it (bound to the logs by ``api.http``),
    enqueue time and deadline."""
    now_ms = int(time.time() * 1000)
    trace = structlog.contextvars.get_contextvars().get("request_id")
    ready = job.model_copy(
        update={
            "request_id": uuid.uuid4().hex,
            "trace_id": trace if isinstance(trace, str) else None,
            "enqueued_at_ms": now_ms,
            "deadline_ms": now_ms + int(queue_timeout_s * 1000),
        }
    )
    structlog.contextvars.bind_contextvars(job_id=ready.request_id, model=ready.model)
    return ready


def load_time(started_ns: int, event: StartedEvent) -> int:
    """Queue wait plus model load: what the API waited, or what the worker measured."""
    return max(time.perf_counter_ns() - started_ns, event.load_ns)


async def run_once(dispatcher: Dispatcher, job: GenerateJob) -> tuple[DoneEvent, int]:
    """Run a job that answers with its done event alone (load, embed); returns it and the
    load time."""
    started, load_ns = time.perf_counter_ns(), 0
    async with dispatcher.submit(job) as events:
        async for event in events:
            if isinstance(event, StartedEvent):
                load_ns = load_time(started, event)
            elif isinstance(event, DoneEvent):
                return event, load_ns
    raise HerdError("the model produced no response")  # the relay ends with done or raises
