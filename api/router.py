"""One pub/sub connection per API process, routing chunk events to per-request queues.

redis-py holds a connection per ``PubSub`` (and a pool stops at a limit), so requests never
get their own: they register a queue here, and one reader task hands each message to the
queue of its channel. A permanent control channel keeps the connection subscribed, so a
request's SUBSCRIBE is only a write and never races the reader for the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from shared import keys

log = structlog.get_logger()

#: Chunks a slow client may fall behind by before its stream is failed (bounded memory).
QUEUE_LIMIT = 4096


class SlowConsumer(Exception):
    """A request's queue overflowed: its client reads slower than the model writes."""


class TokenRouter:
    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: PubSub | None = None
        self._queues: dict[bytes, asyncio.Queue[bytes | BaseException]] = {}
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
        if self._pubsub is not None:
            await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                if not self._pubsub.subscribed:
                    async with self._subscribing:
                        await self._pubsub.subscribe(self._control)
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except (RedisError, OSError) as exc:
                # chunks published while we are disconnected are lost; every waiting request
                # would see a sequence gap later, so fail them now instead
                log.warning("token_router_disconnected", error=str(exc))
                self._fail_all(exc)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            queue = self._queues.get(message["channel"])
            if queue is None:
                continue
            try:
                queue.put_nowait(message["data"])
            except asyncio.QueueFull:
                self._queues.pop(message["channel"], None)
                _replace_with_error(queue, SlowConsumer("client reads too slowly"))

    def _fail_all(self, exc: BaseException) -> None:
        for queue in self._queues.values():
            _replace_with_error(queue, exc)
        self._queues.clear()


def _replace_with_error(queue: asyncio.Queue[bytes | BaseException], exc: BaseException) -> None:
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(exc)
