"""The relay's rules, driven by publishing chunk events by hand on a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from api.dispatch import Dispatcher
from api.registry import Registry
from api.relay import Event
from api.tokens import TokenRouter
from shared import keys
from shared.errors import QUEUE_FULL, Unavailable
from shared.messages import (
    DoneEvent,
    GenerateJob,
    Logprob,
    StartedEvent,
    TokenEvent,
    encode_event,
)
from tests.polling import until

MODEL = "m:latest"


@pytest.fixture
async def dispatcher(redis: Redis, redis_url: str) -> AsyncIterator[Dispatcher]:
    subscriber = Redis.from_url(redis_url)
    router = TokenRouter(subscriber)
    await router.start()
    yield Dispatcher(redis, router, Registry(redis), max_queue=3, check_interval_s=0.2)
    await router.stop()
    await subscriber.aclose()


def _job() -> GenerateJob:
    now = int(time.time() * 1000)
    return GenerateJob(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        kind="generate",
        prompt="x",
        enqueued_at_ms=now,
        deadline_ms=now + 60_000,
    )


async def _collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


async def _publish(redis: Redis, job: GenerateJob, *events: object) -> None:
    for event in events:
        assert isinstance(event, StartedEvent | TokenEvent | DoneEvent)
        await redis.publish(keys.token_channel(job.request_id), encode_event(event))


def _done(job: GenerateJob, seq: int, attempt: int = 1) -> DoneEvent:
    return DoneEvent(
        request_id=job.request_id,
        attempt=attempt,
        seq=seq,
        done_reason="stop",
        n_prompt_tokens=1,
        n_decoded=1,
        prompt_eval_ns=1,
        eval_ns=1,
    )


async def test_events_of_an_older_attempt_are_dropped(dispatcher: Dispatcher, redis: Redis) -> None:
    job = _job()
    rid = job.request_id
    async with dispatcher.submit(job) as events:
        collecting = asyncio.create_task(_collect(events))
        await _publish(
            redis,
            job,
            StartedEvent(request_id=rid, attempt=2, seq=0, worker_id="new"),
            TokenEvent(request_id=rid, attempt=1, seq=5, text="stale"),
            TokenEvent(request_id=rid, attempt=2, seq=1, text="fresh"),
            _done(job, seq=2, attempt=2),
        )
        got = await asyncio.wait_for(collecting, 5)
    assert [e.text for e in got if isinstance(e, TokenEvent)] == ["fresh"]
    assert isinstance(got[-1], DoneEvent)


async def test_tokens_that_arrived_together_are_relayed_as_one(
    dispatcher: Dispatcher, redis: Redis
) -> None:
    job = _job()
    rid = job.request_id
    async with dispatcher.submit(job) as events:
        await _publish(
            redis,
            job,
            StartedEvent(request_id=rid, attempt=1, seq=0, worker_id="w"),
            TokenEvent(request_id=rid, attempt=1, seq=1, text="a", logprobs=[_logprob("a")]),
            TokenEvent(request_id=rid, attempt=1, seq=2, text="b", logprobs=[_logprob("b")]),
            TokenEvent(request_id=rid, attempt=1, seq=3, thinking="c"),
            _done(job, seq=4),
        )
        queue = dispatcher._router._queues[keys.token_channel(rid).encode()]
        await until(lambda: queue.qsize() == 5, message="the events did not all arrive")
        got = await asyncio.wait_for(_collect(events), 5)
    assert [type(e) for e in got] == [StartedEvent, TokenEvent, DoneEvent]
    joined = got[1]
    assert isinstance(joined, TokenEvent)
    assert (joined.text, joined.thinking, joined.seq) == ("ab", "c", 3)
    assert [p.token for p in joined.logprobs or []] == ["a", "b"]


def _logprob(token: str) -> Logprob:
    return Logprob(token=token, logprob=-1.0, bytes=list(token.encode()))


async def test_a_sequence_gap_fails_the_stream(dispatcher: Dispatcher, redis: Redis) -> None:
    job = _job()
    rid = job.request_id
    async with dispatcher.submit(job) as events:
        collecting = asyncio.create_task(_collect(events))
        await _publish(
            redis,
            job,
            StartedEvent(request_id=rid, seq=0, worker_id="w"),
            TokenEvent(request_id=rid, seq=2, text="after a lost chunk"),
        )
        with pytest.raises(Unavailable, match="lost chunks"):
            await asyncio.wait_for(collecting, 5)
    # the request did not finish: a worker would see the cancel marker
    assert await redis.exists(keys.cancel_key(rid))


async def test_admission_never_exceeds_the_queue_limit(
    dispatcher: Dispatcher, redis: Redis
) -> None:
    attempts = 20
    decided: list[bool] = []
    everyone_decided = asyncio.Event()

    def decide(admitted: bool) -> None:
        decided.append(admitted)
        if len(decided) == attempts:
            everyone_decided.set()

    async def submit() -> bool:
        try:
            async with dispatcher.submit(_job()):
                decide(True)
                await everyone_decided.wait()  # hold the job queued while the others try
        except Unavailable as exc:
            assert exc.message == QUEUE_FULL
            decide(False)
            return False
        return True

    admitted = await asyncio.wait_for(asyncio.gather(*(submit() for _ in range(attempts))), 10)
    assert sum(admitted) == 3
    assert await redis.xlen(keys.job_stream(MODEL)) == 3
