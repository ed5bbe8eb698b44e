"""Publishing through the worker's one ``Batcher``, against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

import worker.publisher as publisher_module
from shared import keys
from shared.errors import ErrorType
from tests.polling import until
from worker.engine import Finish
from worker.publisher import Batcher, Publisher, unpack


async def test_publishes_queued_together_arrive_in_order_with_their_receiver_counts(
    redis: Redis,
) -> None:
    batcher = Batcher(redis)
    pubsub = redis.pubsub()
    await pubsub.subscribe("one")
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    got: list[bytes] = []

    async def listen() -> None:
        while len(got) < 50:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                got.append(message["data"])

    listener = asyncio.create_task(listen())
    receivers = await asyncio.gather(
        *(batcher.publish("one", str(i).encode()) for i in range(50)),
        batcher.publish("nobody", b"x"),
    )
    assert receivers == [1] * 50 + [0]
    await until(lambda: listener.done(), message="not every message arrived")
    assert got == [str(i).encode() for i in range(50)]
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_a_redis_failure_reaches_every_waiting_job(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    batcher = Batcher(client)
    await client.aclose()
    client.connection_pool.connection_kwargs["port"] = 1  # nothing listens there
    results = await asyncio.gather(
        *(batcher.publish("c", b"m") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, Exception) for r in results)


async def test_a_progress_record_gets_its_expiry_first_and_again_only_after_the_renewal(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = Publisher(Batcher(redis), "req-ttl", 1, continuable=True)
    key = keys.progress("req-ttl")
    await publisher.token("a", tokens=[1])
    assert 0 < await redis.ttl(key) <= keys.CANCEL_TTL_S
    await redis.persist(key)  # an APPEND that set the expiry again would show here
    await publisher.token("b", tokens=[2])
    assert await redis.ttl(key) == -1
    monkeypatch.setattr(publisher_module, "EXPIRY_RENEW_S", 0.0)
    publisher._renew_at = 0.0  # the renewal is due
    await publisher.token("c", tokens=[3])
    assert 0 < await redis.ttl(key) <= keys.CANCEL_TTL_S
    assert unpack(await redis.get(key)) == [1, 2, 3]
    # an error owed since Redis came back keeps it: another worker may be writing it now
    await publisher.error(ErrorType.UNAVAILABLE, "lost", clear=False)
    assert unpack(await redis.get(key)) == [1, 2, 3]
    await publisher.done(
        Finish("stop", n_prompt_tokens=1, n_decoded=3, prompt_eval_ns=0, eval_ns=0)
    )
    assert not await redis.exists(key)
