"""The API process's one pub/sub subscriber, and the inbox of each request it feeds.

``TokenRouter`` reads every request's token channel on one connection and hands each
message to that request's ``Inbox``. Pub/sub does not buffer: a request subscribes before
its job is queued (``api.dispatch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from shared import keys

log = structlog.get_logger()

Item = bytes | BaseException

#: The router publishes on its own control channel this often, so its reader hears from
#: a live connection at least this often: its reads then wait without a timer each (the
#: timer was a fifth of the router's cost per token) ...
HEARTBEAT_S = 1.0
#: ... and a read that heard nothing for this long is on a connection gone silent (a peer
#: lost without a reset, which redis-py's own reads never noticed): it starts over.
SILENT_S = 5.0


class Inbox:
    """One request's messages, in order: a bounded FIFO with a single reader.

    ``asyncio.Queue`` and ``asyncio.timeout`` cost several times what a token's relay
    does otherwise; a stream waits for most of its tokens, so the wait is one future and
    one timer, only when the inbox is empty.
    """

    def __init__(self, limit: int) -> None:
        self._items: deque[Item] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Item) -> None:
        """Add ``item``; ``asyncio.QueueFull`` when ``limit`` items wait already."""
        if len(self._items) >= self._limit:
            raise asyncio.QueueFull
        self._items.append(item)
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """Drop what waits: the reader gets ``exc`` next."""
        self._items.clear()
        self._items.append(exc)
        self._wake()

    def get_nowait(self) -> Item:
        return self._items.popleft()

    async def get(self, timeout_s: float) -> Item | None:
        """The next item; None when none came within ``timeout_s``."""
        if not self._items:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout_s, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._items.popleft() if self._items else None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


#: Chunks a slow client may fall behind by before its stream is failed (bounded memory).
QUEUE_LIMIT = 4096


class SlowConsumer(Exception):
    """A request's queue overflowed: its client reads slower than the model writes."""


class TokenRouter:
    """One pub/sub connection per API process, routing chunk events to per-request queues.

    redis-py holds a connection per ``PubSub`` (and a pool stops at a limit), so requests
    never get their own: they register a queue here, and one reader task hands each
    message to the queue of its channel. A permanent control channel keeps the connection
    subscribed, so a request's SUBSCRIBE is only a write and never races the reader, and
    carries the watchdog's heartbeats (``_watch``).
    """

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: PubSub | None = None
        self._queues: dict[bytes, Inbox] = {}
        #: Channels that have had an event: a disconnect may have cost them one.
        self._heard: set[bytes] = set()
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        #: When the reader last heard a message (its own heartbeats too).
        self._heard_at = time.monotonic()
        #: Whether the reader is waiting in a read now (not reconnecting).
        self._reading = False
        #: The PubSub is new: the reader has not subscribed it to every channel yet (a
        #: request's own SUBSCRIBE meanwhile must not pass for that).
        self._fresh = True
        self._control = keys.token_channel(f"router-{uuid.uuid4().hex}")
        # redis-py's PubSub opens its connection lazily; two first SUBSCRIBEs at once would
        # open two, and messages for one of them would never be read
        self._subscribing = asyncio.Lock()

    async def start(self) -> None:
        """Start routing; Redis need not be up yet (the API starts and reports unready)."""
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._reader = asyncio.create_task(self._read(), name="token-router")
        self._watchdog = asyncio.create_task(self._watch(), name="token-router-watchdog")

    async def stop(self) -> None:
        # the watchdog first: it may replace the reader
        for task in (self._watchdog, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def subscribe(self, channel: str) -> Inbox:
        """Register an inbox and SUBSCRIBE; returns once Redis has the subscription."""
        assert self._pubsub is not None, "router not started"
        queue = Inbox(QUEUE_LIMIT)
        self._queues[channel.encode()] = queue
        try:
            async with self._subscribing:
                await self._pubsub.subscribe(channel)
        except BaseException:  # cancelled, or Redis: nobody will unsubscribe it
            self._queues.pop(channel.encode(), None)
            raise
        return queue

    async def unsubscribe(self, channel: str) -> None:
        self._queues.pop(channel.encode(), None)
        self._heard.discard(channel.encode())
        if self._pubsub is not None:
            async with self._subscribing:  # it may open the connection too
                await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                if self._fresh:  # the start, or a fresh one after a drop
                    async with self._subscribing:
                        await self._pubsub.subscribe(self._control, *self._queues)
                    self._fresh = False
                    self._heard_at = time.monotonic()  # silence counts from here
                self._reading = True
                try:  # no timeout: the heartbeats bound the wait (``_watch``)
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=None
                    )
                finally:
                    self._reading = False
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
            self._heard_at = time.monotonic()
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
                queue.fail(SlowConsumer("client reads too slowly"))
                # nobody listens any more: the worker's next chunk reaches no one and it
                # stops generating at once, instead of writing to the end for nobody
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(message["channel"])

    async def _watch(self) -> None:
        """Publish a heartbeat on the control channel every ``HEARTBEAT_S``; a reader that
        heard none of those Redis took for ``SILENT_S`` starts over on a fresh connection."""
        #: The first heartbeat Redis took since the reader last heard anything.
        unheard_since: float | None = None
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                async with asyncio.timeout(HEARTBEAT_S):  # this client has no socket timeout
                    await self._client.publish(self._control, b"")
            except (RedisError, OSError, TimeoutError):
                # not sent (Redis out of reach: the reader hears of it; or no right to
                # PUBLISH): no evidence that the reader's connection is silent
                continue
            now = time.monotonic()
            if unheard_since is None or self._heard_at >= unheard_since:
                unheard_since = now
            silent = now - unheard_since
            if self._reading and silent > SILENT_S and self._reader is not None:
                log.warning("token_router_silent", seconds=round(silent, 1))
                unheard_since = None
                self._reader.cancel()
                # not ``await``: the reader's cancellation must not pass for the watchdog's
                await asyncio.wait([self._reader])
                # as a disconnect: what was published meanwhile is lost
                self._fail_heard(ConnectionError("the token stream went silent"))
                await self._renew()
                self._heard_at = time.monotonic()
                self._reader = asyncio.create_task(self._read(), name="token-router")

    async def _renew(self) -> None:
        old, self._pubsub = self._pubsub, self._client.pubsub(ignore_subscribe_messages=True)
        self._fresh = True
        if old is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):  # a silent peer may not answer a close
                    await old.aclose()  # type: ignore[no-untyped-call]

    def _fail_heard(self, exc: BaseException) -> None:
        for channel in self._heard:
            queue = self._queues.pop(channel, None)
            if queue is not None:
                queue.fail(exc)
        self._heard.clear()
