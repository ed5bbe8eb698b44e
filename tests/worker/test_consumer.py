"""Cluster behaviour with in-process FakeEngine workers, through the real API and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import orjson
from redis.asyncio import Redis

from shared import keys
from shared.errors import QUEUE_FULL
from shared.messages import decode_event
from tests.conftest import ApiFactory, Event, WorkerFactory, make_job
from tests.polling import until
from worker.fake_engine import FakeEngine

CHAT = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def _drained(redis: Redis, stream: str) -> bool:
    """No entry left in the stream, none claimed and unfinished."""
    pending = await redis.xpending(stream, keys.JOB_GROUP)
    return bool(await redis.xlen(stream) == 0 and pending["pending"] == 0)


def _seen(*engines: object) -> list[str]:
    return [rid for engine in engines if isinstance(engine, FakeEngine) for rid in engine.seen]


async def test_two_workers_run_each_job_exactly_once(
    api: ApiFactory, worker: WorkerFactory, redis: Redis
) -> None:
    client = await api()
    first = await worker(num_parallel=2, worker_id="w1")
    second = await worker(num_parallel=2, worker_id="w2")
    replies = await asyncio.gather(*(client.post("/api/chat", json=CHAT) for _ in range(20)))
    assert [r.status_code for r in replies] == [200] * 20
    seen = _seen(first.engine, second.engine)
    assert len(seen) == 20 and len(set(seen)) == 20
    assert _seen(first.engine) and _seen(second.engine)
    # done jobs leave the stream and nothing stays pending (the entry goes just after the
    # answer's last event, which the client may see first)
    stream = keys.job_stream("gemma3:270m")
    await until(lambda: _drained(redis, stream), message="done jobs stayed in the stream")


async def test_stream_disconnect_stops_the_worker_within_2s(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    slow = await worker(fake_token_delay_s=0.3)
    body = {**CHAT, "stream": True}
    async with client.stream("POST", "/api/chat", json=body) as response:
        lines = response.aiter_lines()
        assert orjson.loads(await anext(lines))["done"] is False
    left = time.monotonic()
    while slow.active_jobs and time.monotonic() - left < 2:
        await asyncio.sleep(0.02)
    assert slow.active_jobs == 0, "the worker still generates for a client that left"
    assert time.monotonic() - left < 2


async def test_non_streamed_disconnect_cancels_too(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    slow = await worker(fake_token_delay_s=0.3)
    with contextlib.suppress(httpx.ReadTimeout):
        await client.post("/api/chat", json=CHAT, timeout=0.5)
    left = time.monotonic()
    while slow.active_jobs and time.monotonic() - left < 2:
        await asyncio.sleep(0.02)
    assert slow.active_jobs == 0


async def test_a_queued_job_whose_client_left_never_runs(
    api: ApiFactory, worker: WorkerFactory, redis: Redis
) -> None:
    client = await api()
    busy = await worker(num_parallel=1, fake_token_delay_s=0.05)
    running = asyncio.create_task(client.post("/api/chat", json=CHAT))
    while not busy.active_jobs:
        await asyncio.sleep(0.01)
    with contextlib.suppress(httpx.ReadTimeout):
        await client.post("/api/chat", json=CHAT, timeout=0.2)
    assert (await running).status_code == 200
    # the worker is free: it claims the cancelled job and drops it (the entry then leaves)
    stream = keys.job_stream("gemma3:270m")
    await until(lambda: _drained(redis, stream), message="the cancelled job stayed queued")
    assert len(_seen(busy.engine)) == 1


async def test_a_client_that_leaves_while_its_prompt_is_read_stops_its_job(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    """A long prompt being read publishes nothing, so no PUBLISH nobody hears can stop
    it: the job looks for its client's cancel mark meanwhile."""
    client = await api()
    busy = await worker(fake_prefill_delay_s=30)
    asking = asyncio.create_task(client.post("/api/chat", json=CHAT, timeout=60))
    await until(lambda: busy.active_jobs == 1, timeout_s=10, message="never claimed")
    asking.cancel()  # the client goes while its prompt is read
    with contextlib.suppress(asyncio.CancelledError):
        await asking
    await until(lambda: busy.active_jobs == 0, timeout_s=5, message="read on for nobody")


async def test_full_queue_answers_503(api: ApiFactory, worker: WorkerFactory, redis: Redis) -> None:
    client = await api(max_queue=1)
    busy = await worker(num_parallel=1, fake_token_delay_s=0.05)
    running = asyncio.create_task(client.post("/api/chat", json=CHAT))
    while not busy.active_jobs:
        await asyncio.sleep(0.01)
    rejected = await client.post("/api/chat", json=CHAT)
    assert rejected.status_code == 503
    assert rejected.json() == {"error": QUEUE_FULL}
    assert rejected.headers["retry-after"] == "1"
    openai_rejected = await client.post("/v1/chat/completions", json=CHAT)
    assert openai_rejected.status_code == 503
    assert openai_rejected.headers["retry-after"] == "1"
    assert (await running).status_code == 200
    assert await redis.keys(keys.cancel_key("*")) == []  # a refusal leaves nothing behind


async def test_a_job_nobody_takes_times_out_with_503(
    api: ApiFactory, worker: WorkerFactory, redis: Redis
) -> None:
    client = await api(queue_timeout_s=0.5)
    busy = await worker(num_parallel=1, fake_token_delay_s=0.2)
    running = asyncio.create_task(client.post("/api/chat", json=CHAT))
    while not busy.active_jobs:
        await asyncio.sleep(0.01)
    waited = await client.post("/api/chat", json=CHAT)
    assert waited.status_code == 503
    assert "timed out" in waited.json()["error"]
    assert (await running).status_code == 200
    stream = keys.job_stream("gemma3:270m")
    await until(lambda: _drained(redis, stream), message="the expired job stayed queued")
    assert len(_seen(busy.engine)) == 1  # the expired job was dropped, not run


async def test_worker_advert_carries_devices_models_and_slots(
    worker: WorkerFactory, redis: Redis
) -> None:
    await worker(worker_id="advertised", num_parallel=3, fake_models=["m:1"])
    raw = await redis.get(keys.worker_key("advertised"))
    assert raw is not None
    advert = orjson.loads(raw)
    assert advert["slots_total"] == 3 and advert["ready"] is True
    assert [m["name"] for m in advert["models"]] == ["m:1"]
    assert advert["devices"][0]["total_bytes"] > 0
    assert 0 < await redis.pttl(keys.worker_key("advertised")) <= 1000


async def test_a_worker_restarted_under_its_id_runs_what_it_left_pending(
    worker: WorkerFactory, redis: Redis
) -> None:
    job = make_job()
    stream = keys.job_stream(job.model)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.token_channel(job.request_id))
    await pubsub.get_message(timeout=1)
    # the crashed process (same pod, same hostname-based id) had claimed the job
    await redis.xgroup_create(stream, keys.JOB_GROUP, id="0", mkstream=True)
    await redis.xadd(stream, dict(job.to_fields()))  # type: ignore[arg-type]
    await redis.xreadgroup(keys.JOB_GROUP, "w1", {stream: ">"}, count=1)
    await asyncio.sleep(1.1)  # older than the reclaim threshold
    await worker(worker_id="w1")
    events: list[Event] = []
    async with asyncio.timeout(10):
        while not events or events[-1].type not in ("done", "error"):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                events.append(decode_event(message["data"]))
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert events[-1].type == "done"
    assert {e.attempt for e in events} == {2}  # a new attempt, as a takeover is
    assert (await redis.xpending(stream, keys.JOB_GROUP))["pending"] == 0


async def test_workers_claim_only_the_jobs_they_can_start_now(
    api: ApiFactory, worker: WorkerFactory, redis: Redis
) -> None:
    """8 jobs, 2 workers with 2 slots each: never more than 4 claimed or running, and each
    job starts within one job's time of a slot freeing."""
    client = await api()
    delay = 0.04
    workers = [
        await worker(worker_id=f"w{i}", num_parallel=2, fake_token_delay_s=delay) for i in (1, 2)
    ]
    stream = keys.job_stream("gemma3:270m")
    claimed: dict[str, int] = {}

    async def watch() -> None:
        while True:
            for consumer in await redis.xinfo_consumers(stream, keys.JOB_GROUP):
                name = consumer["name"].decode()
                claimed[name] = max(claimed.get(name, 0), consumer["pending"])
            await asyncio.sleep(0.005)

    async def one() -> tuple[float, float]:
        async with client.stream("POST", "/api/chat", json={**CHAT, "stream": True}) as reply:
            lines = reply.aiter_lines()
            await anext(lines)
            first = time.monotonic()
            async for _ in lines:
                pass
            return first, time.monotonic()

    watcher = asyncio.create_task(watch())
    began = time.monotonic()
    spans = await asyncio.gather(*(one() for _ in range(8)))
    watcher.cancel()
    job_time = min(end - start for start, end in spans)
    assert claimed and max(claimed.values()) <= 2
    for w in workers:
        assert isinstance(w.engine, FakeEngine)
        assert w.engine.peak["gemma3:270m"] <= 2
    starts = sorted(start for start, _ in spans)
    ends = sorted(end for _, end in spans)
    assert all(start - began < job_time for start in starts[:4])  # four start at once
    for k in range(4, 8):  # the rest, each within a job's time of the k-4th slot freeing
        assert starts[k] - ends[k - 4] < job_time
