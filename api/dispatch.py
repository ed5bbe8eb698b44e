"""Step 2 of a request: sending its job to the workers and relaying the job's events back.

``TokenRouter`` is the process's one pub/sub subscriber: every request's token channel is
read on one connection and handed to that request's queue.

``Dispatcher.submit`` subscribes to the request's token channel *before* it XADDs the job
(pub/sub does not buffer), and on exit unsubscribes and, unless the job finished, marks it
cancelled, so a job still queued is never run and a running one stops (its worker sees no
subscriber on the channel).

Prefix-aware routing: a chat whose earlier turns a worker answered (``shared.prefix``) goes
to that worker's own stream (``keys.worker_jobs``) when its advert shows the model loaded
with a free slot, so the conversation's prompt is found in its KV cache; not taken there
within ``AFFINITY_WAIT_S``, or its worker gone before the first token, it moves to the
model's stream (one atomic script: never run twice).

The relay enforces the failure rule: events of an older attempt are dropped, a sequence
gap fails the stream, a worker whose heartbeat expired fails it if tokens were already
sent and otherwise waits for another worker to take the job over; a job not started
before its deadline gets 503. Every request ends: done, one error, or an HTTP error.

Mid-stream continuation: for a continuable job (``GenerateJob.continuable``) whose worker
died after tokens were sent, the relay waits (``RESUME_WAIT_S``) for the worker that
takes the job over: its ``started`` says after how many of the answer's tokens it goes on
(``resumed_at``), and only if that is exactly the count the last chunk received carried
(``covered``) does the stream go on, with no second ``started`` and no error: one answer,
its eval_count over both workers, its eval_duration the two workers' decoding. Anything
else is the one error line it always was.
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
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from api.registry import Registry
from shared import keys, prefix
from shared.errors import (
    QUEUE_FULL,
    WORKER_LOST,
    HerdError,
    QueueTimeout,
    Unavailable,
    from_type,
)
from shared.messages import (
    ChatMessage,
    DoneEvent,
    ErrorEvent,
    GenerateJob,
    StartedEvent,
    TokenEvent,
    decode_event,
)

if TYPE_CHECKING:
    from api.metrics import ApiMetrics

log = structlog.get_logger()

#: Chunks a slow client may fall behind by before its stream is failed (bounded memory).
QUEUE_LIMIT = 4096


class SlowConsumer(Exception):
    """A request's queue overflowed: its client reads slower than the model writes."""


class TokenRouter:
    """One pub/sub connection per API process, routing chunk events to per-request queues.

    redis-py holds a connection per ``PubSub`` (and a pool stops at a limit), so requests
    never get their own: they register a queue here, and one reader task hands each
    message to the queue of its channel. A permanent control channel keeps the connection
    subscribed, so a request's SUBSCRIBE is only a write and never races the reader.
    """

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: PubSub | None = None
        self._queues: dict[bytes, asyncio.Queue[bytes | BaseException]] = {}
        #: Channels that have had an event: a disconnect may have cost them one.
        self._heard: set[bytes] = set()
        self._reader: asyncio.Task[None] | None = None
        self._control = keys.token_channel(f"router-{uuid.uuid4().hex}")
        # redis-py's PubSub opens its connection lazily; two first SUBSCRIBEs at once would
        # open two, and messages for one of them would never be read
        self._subscribing = asyncio.Lock()

    async def start(self) -> None:
        """Start routing; Redis need not be up yet (the API starts and reports unready)."""
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._reader = asyncio.create_task(self._read(), name="token-router")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def subscribe(self, channel: str) -> asyncio.Queue[bytes | BaseException]:
        """Register a queue and SUBSCRIBE; returns once Redis has the subscription."""
        assert self._pubsub is not None, "router not started"
        queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue(QUEUE_LIMIT)
        self._queues[channel.encode()] = queue
        async with self._subscribing:
            await self._pubsub.subscribe(channel)
        return queue

    async def unsubscribe(self, channel: str) -> None:
        self._queues.pop(channel.encode(), None)
        self._heard.discard(channel.encode())
        if self._pubsub is not None:
            await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                if not self._pubsub.subscribed:  # the start, or a fresh one after a drop
                    async with self._subscribing:
                        await self._pubsub.subscribe(self._control, *self._queues)
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except (RedisError, OSError) as exc:
                # chunks published while we are disconnected are lost: a request whose job
                # has begun would see a gap later, so it fails now. One still waiting for
                # its job to start keeps waiting: its job is queued (Redis's AOF keeps it)
                # and its channel is subscribed again on the fresh PubSub, unlike the failed
                # ones' (redis-py would re-subscribe those, and their jobs would run for
                # clients that are gone)
                log.warning("token_router_disconnected", error=str(exc))
                self._fail_heard(exc)
                await self._renew()
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            queue = self._queues.get(message["channel"])
            if queue is None:
                continue
            self._heard.add(message["channel"])
            try:
                queue.put_nowait(message["data"])
            except asyncio.QueueFull:
                self._queues.pop(message["channel"], None)
                _replace_with_error(queue, SlowConsumer("client reads too slowly"))
                # nobody listens any more: the worker's next chunk reaches no one and it
                # stops generating at once, instead of writing to the end for nobody
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(message["channel"])

    async def _renew(self) -> None:
        old, self._pubsub = self._pubsub, self._client.pubsub(ignore_subscribe_messages=True)
        if old is not None:
            with contextlib.suppress(RedisError, OSError):
                await old.aclose()  # type: ignore[no-untyped-call]

    def _fail_heard(self, exc: BaseException) -> None:
        for channel in self._heard:
            queue = self._queues.pop(channel, None)
            if queue is not None:
                _replace_with_error(queue, exc)
        self._heard.clear()


def _replace_with_error(queue: asyncio.Queue[bytes | BaseException], exc: BaseException) -> None:
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(exc)


#: What a 503 for a full queue tells clients (``Retry-After``): a slot frees within seconds.
QUEUE_FULL_RETRY_AFTER_S = 1

Event = StartedEvent | TokenEvent | DoneEvent

#: How long a job routed to the worker holding its prefix waits for it to take the job.
AFFINITY_WAIT_S = 1.0
#: How long a stream whose worker died waits for another worker to go on with it (one
#: with the model loaded was live when it died; it takes the job at its next free slot).
RESUME_WAIT_S = 30.0

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
        relay = _Relay(job, queue, self._registry, self._check_interval_s, self, self._metrics)
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


class _Relay:
    def __init__(
        self,
        job: GenerateJob,
        queue: asyncio.Queue[bytes | BaseException],
        registry: Registry,
        check_interval_s: float,
        dispatcher: Dispatcher,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self._job = job
        self._metrics = metrics
        #: When the job was submitted, and its last token chunk came (0: none since the
        #: start or a continuation), for the latency histograms.
        self._submitted, self._chunk_at = time.perf_counter(), 0.0
        self._waited = False
        self._queue = queue
        self._registry = registry
        self._check_interval_s = check_interval_s
        self._dispatcher = dispatcher
        self.finished = False
        self._worker: str | None = None
        self._n_tokens = 0
        self._text: list[str] = []
        #: (worker, entry id, when) of a job sent to the worker holding its prefix, until
        #: its first token: before that it may still move to the model's stream.
        self.routed: tuple[str, str, float] | None = None
        self._attempt, self._expected = 0, 0
        #: The answer's tokens the last chunk covered; its first and last chunk's times.
        self._covered, self._first_ns, self._last_ns = 0, 0, 0
        #: Waiting for another worker to go on with the answer, until then (monotonic).
        self._resume_until: float | None = None
        #: Decoding time of earlier attempts (a continuation's done adds it).
        self._eval_before_ns = 0
        #: When the last chunk before a continuation came (0: not in one).
        self._gap_from = 0.0

    async def events(self) -> AsyncIterator[Event]:
        held: bytes | BaseException | None = None
        while True:
            if held is not None:
                item, held = held, None
            elif not self._queue.empty():
                item = self._queue.get_nowait()
            else:
                # a routed job is looked after closely until its worker is known to have it
                closely = self.routed is not None and self._worker is None
                waiting_s = AFFINITY_WAIT_S / 4 if closely else self._check_interval_s
                try:
                    async with asyncio.timeout(waiting_s):
                        item = await self._queue.get()
                except TimeoutError:
                    await self._check_progress()
                    continue
            if isinstance(item, BaseException):
                raise Unavailable(f"lost the token stream: {item}")
            event = decode_event(item)
            if event.attempt < self._attempt:
                continue  # a late chunk of an attempt that was taken over
            resumed = False
            if event.attempt > self._attempt:
                if self._n_tokens:
                    if not self._continues(event):
                        raise Unavailable(WORKER_LOST)
                    resumed = True
                self._attempt, self._expected = event.attempt, 0
            if event.seq != self._expected:
                raise Unavailable(
                    f"lost chunks of the stream (expected {self._expected}, got {event.seq})"
                )
            self._expected += 1
            if isinstance(event, ErrorEvent):
                self.finished = True
                raise from_type(event.error_type, event.message)
            if isinstance(event, StartedEvent):
                self._worker = event.worker_id
                if self._metrics is not None and not self._waited:
                    self._waited = True  # the first start only (not a take-over's)
                    self._metrics.queue_wait.labels(self._job.model).observe(
                        time.perf_counter() - self._submitted
                    )
                if resumed:  # the client has its started: the answer just goes on
                    self._resume_until = None
                    self._eval_before_ns += self._last_ns - self._first_ns
                    self._first_ns = self._last_ns = 0
                    self._gap_from, self._chunk_at = self._chunk_at, 0.0
                    log.warning("stream_continued", worker_id=event.worker_id, at=self._covered)
                    continue
            elif isinstance(event, TokenEvent):
                self._observe_chunk()
                self._n_tokens += 1
                self.routed = None
                self._last_ns = time.perf_counter_ns()
                self._first_ns = self._first_ns or self._last_ns
                # tokens that arrived together go out as one chunk: one line, one write
                while held is None and not self._queue.empty():
                    raw = self._queue.get_nowait()
                    after = None if isinstance(raw, BaseException) else decode_event(raw)
                    if not (
                        isinstance(after, TokenEvent)
                        and (after.attempt, after.seq) == (self._attempt, self._expected)
                    ):
                        held = raw
                        break
                    event, self._expected = _joined(event, after), self._expected + 1
                self._text.append(event.text)
                self._covered = event.covered or self._covered
            else:
                self.finished = True
                if self._eval_before_ns:
                    event = event.model_copy(
                        update={"eval_ns": event.eval_ns + self._eval_before_ns}
                    )
                if self._worker is not None:
                    self._dispatcher.remember(self._job, self._worker, "".join(self._text))
            yield event
            if self.finished:
                return

    def _observe_chunk(self) -> None:
        """Time to first token, or since the last chunk (called before counting it)."""
        now = time.perf_counter()
        if self._metrics is not None:
            model = self._job.model
            if self._gap_from:
                self._metrics.continuation_gap.labels(model).observe(now - self._gap_from)
            if not self._n_tokens:
                self._metrics.time_to_first_token.labels(model).observe(now - self._submitted)
            elif self._chunk_at:
                self._metrics.inter_token_latency.labels(model).observe(now - self._chunk_at)
        self._chunk_at, self._gap_from = now, 0.0

    async def _check_progress(self) -> None:
        if self.routed is not None:
            owner, entry_id, since = self.routed
            alive = await self._registry.is_alive(owner)
            unclaimed = self._worker is None and time.monotonic() - since >= AFFINITY_WAIT_S
            if not alive or unclaimed:
                if await self._dispatcher.move(self._job, owner, entry_id, alive=alive):
                    # a fresh run from the model's stream: numbering starts again
                    self.routed, self._worker = None, None
                    self._attempt, self._expected = 0, 0
                    return
                if not alive:
                    self.routed = None  # answered meanwhile, or gone: the rules below
        if self._worker is not None:
            if await self._registry.is_alive(self._worker):
                return
            log.warning("worker_lost", worker_id=self._worker, tokens_sent=self._n_tokens)
            if self._n_tokens:
                # go on only with another replica ready to take it over
                others = set(await self._registry.replicas(self._job.model)) - {self._worker}
                if not (self._job.continuable() and self._covered and others):
                    raise Unavailable(WORKER_LOST)
                self._resume_until = time.monotonic() + RESUME_WAIT_S
            self._worker = None  # another worker reclaims the job; wait for its attempt
        elif self._resume_until is not None:
            if time.monotonic() > self._resume_until:
                raise Unavailable(WORKER_LOST)
        elif time.time() * 1000 > self._job.deadline_ms:
            raise QueueTimeout("timed out waiting for a worker")

    def _continues(self, event: Event | ErrorEvent) -> bool:
        """Whether a new attempt's first event goes on exactly where the client is."""
        return (
            isinstance(event, StartedEvent)
            and event.seq == 0
            and event.resumed_at > 0
            and event.resumed_at == self._covered
        )


def _joined(first: TokenEvent, then: TokenEvent) -> TokenEvent:
    """Two consecutive token events as one (the later one's numbering)."""
    return then.model_copy(
        update={
            "text": first.text + then.text,
            "thinking": first.thinking + then.thinking,
            "tool_calls": [*(first.tool_calls or []), *(then.tool_calls or [])] or None,
            "logprobs": [*(first.logprobs or []), *(then.logprobs or [])] or None,
        }
    )


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
