"""Sending a job to the workers and relaying its chunk events back, in order.

``Dispatcher.submit`` subscribes to the request's token channel *before* it XADDs the job
(pub/sub does not buffer), and on exit unsubscribes and, unless the job finished, marks it
cancelled, so a job still queued is never run and a running one stops (its worker sees no
subscriber on the channel).

The relay enforces the failure rule: events of an older attempt are dropped, a sequence
gap fails the stream, a worker whose heartbeat expired fails it if tokens were already
sent and otherwise waits for another worker to take the job over; a job not started
before its deadline gets 503. Every request ends: done, one error, or an HTTP error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog
from redis.asyncio import Redis

from api.registry import Registry
from api.router import TokenRouter
from shared import keys
from shared.errors import (
    QUEUE_FULL,
    WORKER_LOST,
    QueueTimeout,
    Unavailable,
    from_type,
)
from shared.messages import (
    DoneEvent,
    ErrorEvent,
    GenerateJob,
    StartedEvent,
    TokenEvent,
    decode_event,
)

log = structlog.get_logger()

#: What a 503 for a full queue tells clients (``Retry-After``): a slot frees within seconds.
QUEUE_FULL_RETRY_AFTER_S = 1

Event = StartedEvent | TokenEvent | DoneEvent

# XLEN counts queued and running jobs (workers delete an entry once it is done). Checking and
# adding in one script costs one round trip and keeps concurrent requests from overshooting.
_ADMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
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
    ) -> None:
        self._client = client
        self._router = router
        self._registry = registry
        self._max_queue = max_queue
        self._check_interval_s = check_interval_s
        self._admit = client.register_script(_ADMIT)

    @asynccontextmanager
    async def submit(self, job: GenerateJob) -> AsyncIterator[AsyncIterator[Event]]:
        """Enqueue ``job``; yields its events (started, tokens, done) in order."""
        channel = keys.token_channel(job.request_id)
        stream = keys.job_stream(job.model)
        queue = await self._router.subscribe(channel)
        relay = _Relay(job, queue, self._registry, self._check_interval_s)
        try:
            if not await self._admit(keys=[stream], args=[self._max_queue, job.to_fields()["job"]]):
                raise Unavailable(QUEUE_FULL, retry_after_s=QUEUE_FULL_RETRY_AFTER_S)
            yield relay.events()
        finally:
            # cleanup must run even while the request's task is being cancelled
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._router.unsubscribe(channel)
                if not relay.finished:
                    await self._client.set(keys.cancel_key(job.request_id), 1, ex=keys.CANCEL_TTL_S)


class _Relay:
    def __init__(
        self,
        job: GenerateJob,
        queue: asyncio.Queue[bytes | BaseException],
        registry: Registry,
        check_interval_s: float,
    ) -> None:
        self._job = job
        self._queue = queue
        self._registry = registry
        self._check_interval_s = check_interval_s
        self.finished = False
        self._worker: str | None = None
        self._n_tokens = 0

    async def events(self) -> AsyncIterator[Event]:
        attempt, expected = 0, 0
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), self._check_interval_s)
            except TimeoutError:
                await self._check_progress()
                continue
            if isinstance(item, BaseException):
                raise Unavailable(f"lost the token stream: {item}")
            event = decode_event(item)
            if event.attempt < attempt:
                continue  # a late chunk of an attempt that was taken over
            if event.attempt > attempt:
                if self._n_tokens:
                    raise Unavailable(WORKER_LOST)
                attempt, expected = event.attempt, 0
            if event.seq != expected:
                raise Unavailable(
                    f"lost chunks of the stream (expected {expected}, got {event.seq})"
                )
            expected += 1
            if isinstance(event, ErrorEvent):
                self.finished = True
                raise from_type(event.error_type, event.message)
            if isinstance(event, StartedEvent):
                self._worker = event.worker_id
            elif isinstance(event, TokenEvent):
                self._n_tokens += 1
            else:
                self.finished = True
            yield event
            if self.finished:
                return

    async def _check_progress(self) -> None:
        if self._worker is not None:
            if await self._registry.is_alive(self._worker):
                return
            log.warning("worker_lost", worker_id=self._worker, tokens_sent=self._n_tokens)
            if self._n_tokens:
                raise Unavailable(WORKER_LOST)
            self._worker = None  # another worker reclaims the job; wait for its attempt
        elif time.time() * 1000 > self._job.deadline_ms:
            raise QueueTimeout("timed out waiting for a worker")
