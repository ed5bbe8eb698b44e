"""A job's announcement and its end when Redis goes away: an in-process worker with
FakeEngine, a real Redis (behind a proxy where its connections must fail)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from shared import keys
from shared.messages import (
    DoneEvent,
    ErrorEvent,
    GenerateJob,
    StartedEvent,
    TokenEvent,
    decode_event,
)
from tests.conftest import Event, WorkerFactory, make_job
from tests.polling import until
from tests.proxy import Proxy
from worker.fake_engine import COUNT_MARKER
from worker.jobs import LOST_REDIS


async def _events(redis: Redis, job: GenerateJob) -> AsyncIterator[Event]:
    """``job``'s events as they come, subscribed before it is read."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.token_channel(job.request_id))
    await pubsub.get_message(timeout=1)  # the confirmation
    try:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                event = decode_event(message["data"])
                yield event
                if isinstance(event, DoneEvent | ErrorEvent):
                    return
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_a_job_whose_api_listens_a_moment_late_still_runs(
    worker: WorkerFactory, redis: Redis
) -> None:
    """An API process that lost Redis subscribes again only a moment after Redis is back;
    a worker may have claimed the job first. Its client still waits: the start is
    announced again rather than the job dropped."""
    await worker()
    job = make_job()
    stream = keys.job_stream(job.model)
    await redis.xadd(stream, dict(job.to_fields()))  # type: ignore[arg-type]

    async def claimed() -> bool:
        return int((await redis.xpending(stream, keys.JOB_GROUP))["pending"]) == 1

    await until(claimed, message="never claimed")
    await asyncio.sleep(0.1)  # its start announced to nobody (the next try is at 0.25 s)
    async with asyncio.timeout(10):
        events = [event async for event in _events(redis, job)]
    assert isinstance(events[0], StartedEvent) and isinstance(events[-1], DoneEvent)
    assert [event.seq for event in events] == list(range(len(events)))


async def test_a_job_that_lost_redis_mid_answer_ends_with_an_error_once_redis_is_back(
    worker: WorkerFactory, redis: Redis, proxy: Proxy
) -> None:
    """Its worker lives on, so nothing else would ever end the client's stream."""
    await worker(redis_url=f"redis://127.0.0.1:{proxy.port}", fake_token_delay_s=0.05)
    job = make_job(kind="generate", prompt=COUNT_MARKER, messages=[])
    seen: list[Event] = []
    async with asyncio.timeout(20):
        listening = _events(redis, job)
        first = asyncio.ensure_future(anext(listening))
        await asyncio.sleep(0.2)  # subscribed
        await redis.xadd(keys.job_stream(job.model), dict(job.to_fields()))  # type: ignore[arg-type]
        seen.append(await first)
        async for event in listening:
            seen.append(event)
            if sum(isinstance(e, TokenEvent) for e in seen) == 5:
                proxy.cut()  # the worker's connections fail, and new ones too, for a second
                await asyncio.sleep(1.0)
                proxy.restore()
    assert isinstance(seen[-1], ErrorEvent) and seen[-1].message == LOST_REDIS
    assert not any(isinstance(e, DoneEvent) for e in seen)
