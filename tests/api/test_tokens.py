"""api.tokens: each request's Inbox (in order, bounded, a wait that gives up) and the
TokenRouter that feeds them (a slow reader, a connection gone silent)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.asyncio import Redis

from api import tokens
from api.tokens import QUEUE_LIMIT, Inbox, TokenRouter
from tests.polling import until
from tests.proxy import Proxy


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


async def test_a_slow_reader_fails_instead_of_buffering_without_bound(
    redis: Redis, redis_url: str
) -> None:
    subscriber = Redis.from_url(redis_url)
    router = TokenRouter(subscriber)
    await router.start()
    try:
        queue = await router.subscribe("herd-test-slow")
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(QUEUE_LIMIT + 10):
                pipe.publish("herd-test-slow", b"x")
            await pipe.execute()
        await until(lambda: queue.qsize() == 1)
        item = queue.get_nowait()
        assert isinstance(item, BaseException) and "too slowly" in str(item)
    finally:
        await router.stop()
        await subscriber.aclose()


async def _heard(redis: Redis, channel: str, inbox: Inbox) -> bool:
    """Publish on ``channel`` (a subscription through the proxy may not be in place yet);
    whether ``inbox`` has had a message."""
    await redis.publish(channel, b"hello")
    return inbox.qsize() > 0


async def test_a_connection_gone_silent_is_found_and_replaced(
    redis: Redis, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router's connection stops delivering (no reset): a stream that had begun fails
    (what was published meanwhile is lost), and the router goes on, on a fresh connection."""
    monkeypatch.setattr(tokens, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(tokens, "SILENT_S", 0.5)
    subscriber = Redis(host="127.0.0.1", port=proxy.port)
    router = TokenRouter(subscriber)
    await router.start()
    try:
        begun = await router.subscribe("herd-test-begun")
        await until(lambda: _heard(redis, "herd-test-begun", begun), message="not subscribed")
        while not begun.empty():
            assert begun.get_nowait() == b"hello"
        proxy.silence()
        failed = await begun.get(5.0)
        assert isinstance(failed, ConnectionError) and "silent" in str(failed)
        # subscribed while the router renews: its fresh connection must still get every
        # channel, its own heartbeat channel too, or it would go "silent" again
        later = await router.subscribe("herd-test-later")
        await until(lambda: _heard(redis, "herd-test-later", later), message="not recovered")
        await asyncio.sleep(3 * tokens.SILENT_S)
        while not later.empty():
            assert later.get_nowait() == b"hello"  # no error: no second restart
        await redis.publish("herd-test-later", b"again")
        assert await later.get(5.0) == b"again"
    finally:
        await router.stop()
        await subscriber.aclose()


async def test_a_router_that_may_not_publish_hears_no_false_silence(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API whose Redis user may SUBSCRIBE but not PUBLISH (an operator's ACL): its
    heartbeats are refused, which says nothing about its connection; no restart fails
    its streams."""
    monkeypatch.setattr(tokens, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(tokens, "SILENT_S", 0.3)
    user = f"herd-nopub-{uuid.uuid4().hex[:8]}"
    await redis.acl_setuser(
        user,
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-publish"],
    )
    subscriber = Redis.from_url(redis_url, username=user, password="pw")
    router = TokenRouter(subscriber)
    await router.start()
    try:
        inbox = await router.subscribe("herd-test-nopub")
        await until(lambda: _heard(redis, "herd-test-nopub", inbox), message="not subscribed")
        await asyncio.sleep(4 * tokens.SILENT_S)  # idle, every heartbeat refused
        while not inbox.empty():
            assert inbox.get_nowait() == b"hello"  # no "went silent" error
        await redis.publish("herd-test-nopub", b"still")
        assert await inbox.get(5.0) == b"still"
    finally:
        await router.stop()
        await subscriber.aclose()
        await redis.acl_deluser(user)
