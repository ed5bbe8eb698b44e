"""A value read from Redis and reused for a short while, read once however many ask.

Under load, hundreds of requests find an expired cache in the same millisecond; each reading
it again would multiply the round trips (and the decoding of every worker's advert) by
the number of requests in flight. One read runs; the others await its result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Cached(Generic[T]):
    """``await cached.get()``: the value, re-read by ``load`` when older than ``ttl_s``."""

    def __init__(self, load: Callable[[], Awaitable[T]], initial: T, ttl_s: float) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self.value = initial
        self._read_at = float("-inf")
        #: When ``expire`` was last called: a read begun before it may miss the change.
        self._expired_at = float("-inf")
        self._reading: asyncio.Future[T] | None = None

    def expire(self) -> None:
        """The next ``get`` reads again (this process changed what it caches), not joining
        a read begun before."""
        self._read_at = float("-inf")
        self._expired_at = time.monotonic()
        self._reading = None

    async def get(self, *, fresh: bool = False) -> T:
        """The cached value; a read now with ``fresh`` (never one begun before the call)."""
        if fresh:
            return await self._read()
        if time.monotonic() - self._read_at < self._ttl_s:
            return self.value
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
            self._reading.add_done_callback(self._finished)
        # one caller cancelled must not cancel the read the others wait for
        return await asyncio.shield(self._reading)

    async def _read(self) -> T:
        started = time.monotonic()
        value = await self._load()
        # not one begun before a change of this process, nor older than what is cached
        if started >= self._expired_at and started >= self._read_at:
            self.value, self._read_at = value, started
        return value

    def _finished(self, reading: asyncio.Future[T]) -> None:
        if self._reading is reading:
            self._reading = None
        if not reading.cancelled():
            reading.exception()  # retrieved: every waiter may have gone meanwhile
