"""api.tokens.Inbox: a request's messages in order, bounded, with a wait that gives up."""

from __future__ import annotations

import asyncio
import time

import pytest

from api.tokens import Inbox


async def test_items_come_out_in_order() -> None:
    inbox = Inbox(8)
    for item in (b"a", b"b", b"c"):
        inbox.put_nowait(item)
    assert inbox.qsize() == 3
    assert [await inbox.get(1.0) for _ in range(3)] == [b"a", b"b", b"c"]
    assert inbox.empty()


async def test_a_waiting_reader_wakes_when_an_item_comes() -> None:
    inbox = Inbox(8)
    reader = asyncio.create_task(inbox.get(5.0))
    await asyncio.sleep(0.01)
    assert not reader.done()
    inbox.put_nowait(b"x")
    assert await asyncio.wait_for(reader, 1) == b"x"


async def test_the_wait_gives_up_with_none() -> None:
    inbox = Inbox(8)
    started = time.monotonic()
    assert await inbox.get(0.05) is None
    assert 0.04 <= time.monotonic() - started < 1
    inbox.put_nowait(b"late")  # nobody waits now: kept for the next get
    assert await inbox.get(0.05) == b"late"


async def test_a_full_inbox_refuses_and_fail_replaces_what_waits() -> None:
    inbox = Inbox(2)
    inbox.put_nowait(b"1")
    inbox.put_nowait(b"2")
    with pytest.raises(asyncio.QueueFull):
        inbox.put_nowait(b"3")
    reason = ConnectionError("gone")
    inbox.fail(reason)
    assert inbox.qsize() == 1
    assert await inbox.get(1.0) is reason


async def test_a_cancelled_reader_leaves_the_inbox_usable() -> None:
    inbox = Inbox(8)
    reader = asyncio.create_task(inbox.get(5.0))
    await asyncio.sleep(0.01)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    inbox.put_nowait(b"y")
    assert await inbox.get(1.0) == b"y"
