"""api.cache.Cached: one read however many ask, and a change of this process seen at once."""

from __future__ import annotations

import asyncio

import pytest

from api.cache import Cached


class Source:
    """A value behind a read that takes a while, counting the reads."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def load(self) -> int:
        self.reads += 1
        seen = self.value
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return seen


async def test_many_callers_of_an_expired_value_share_one_read() -> None:
    source = Source()
    cached = Cached(source.load, -1, ttl_s=60)
    source.gate.clear()
    callers = [asyncio.create_task(cached.get()) for _ in range(50)]
    await asyncio.sleep(0)
    source.gate.set()
    assert await asyncio.gather(*callers) == [0] * 50
    assert source.reads == 1
    assert await cached.get() == 0 and source.reads == 1  # within the ttl: no read


async def test_a_value_older_than_the_ttl_is_read_again() -> None:
    source = Source()
    cached = Cached(source.load, -1, ttl_s=0.05)
    assert await cached.get() == 0
    source.value = 1
    await asyncio.sleep(0.06)
    assert await cached.get() == 1
    assert source.reads == 2


async def test_expire_does_not_join_a_read_begun_before_it() -> None:
    source = Source()
    cached = Cached(source.load, -1, ttl_s=60)
    source.gate.clear()
    early = asyncio.create_task(cached.get())
    while not source.reads:  # until the read has seen value 0
        await asyncio.sleep(0)
    source.value = 1
    cached.expire()  # this process changed it
    late = asyncio.create_task(cached.get())
    while source.reads < 2:
        await asyncio.sleep(0)
    source.gate.set()
    assert await early == 0
    assert await late == 1
    assert await cached.get() == 1  # the stale read did not become the cached value
    assert source.reads == 2


async def test_a_cancelled_caller_leaves_the_read_to_the_others() -> None:
    source = Source()
    cached = Cached(source.load, -1, ttl_s=60)
    source.gate.clear()
    first, second = asyncio.create_task(cached.get()), asyncio.create_task(cached.get())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    source.gate.set()
    assert await second == 0
    assert first.cancelled()


async def test_a_failed_read_fails_its_callers_and_the_next_get_tries_again() -> None:
    source = Source()
    cached = Cached(source.load, -1, ttl_s=60)
    source.fail = OSError("redis down")
    callers = [asyncio.create_task(cached.get()) for _ in range(3)]
    for caller in callers:
        with pytest.raises(OSError):
            await caller
    source.fail = None
    assert await cached.get() == 0
    assert source.reads == 2


async def test_fresh_always_reads() -> None:
    source = Source()
    cached = Cached(source.load, -1, ttl_s=60)
    await cached.get()
    source.value = 5
    assert await cached.get(fresh=True) == 5
    assert await cached.get() == 5  # and it is the cached value now
    assert source.reads == 2
