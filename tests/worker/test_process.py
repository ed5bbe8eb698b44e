"""Workers as real ``herd worker`` processes: killed, drained, taken over."""

from __future__ import annotations

import asyncio
import signal
import time

import orjson
from redis.asyncio import Redis

from shared import keys
from shared.errors import WORKER_LOST
from shared.messages import ControlMessage, DoneEvent
from tests.conftest import (
    ApiFactory,
    ProcessFactory,
    WorkerFactory,
    make_job,
    read_advert,
    run_job,
    wait_for_http,
    worker_env,
)

CHAT = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}]}
TTL_S = 1.0


def _worker_env(redis_url: str, worker_id: str, delay_s: float) -> dict[str, str]:
    return worker_env(redis_url, worker_id, fake_token_delay_s=delay_s, heartbeat_ttl_s=TTL_S)


async def _until_advertised(redis: Redis, worker_id: str) -> None:
    deadline = time.monotonic() + 30
    while not await redis.exists(keys.worker_key(worker_id)):
        assert time.monotonic() < deadline, f"{worker_id} never advertised"
        await asyncio.sleep(0.05)


async def test_sigkilled_worker_leaves_the_adverts_within_its_ttl(
    herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    child = herd_process("worker", **_worker_env(redis_url, "doomed", 0.01))
    await _until_advertised(redis, "doomed")
    child.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    while await redis.exists(keys.worker_key("doomed")):
        await asyncio.sleep(0.02)
    assert time.monotonic() - killed <= TTL_S + 0.1


async def test_probes_answer_and_readiness_follows_the_models(
    herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    env = _worker_env(redis_url, "probed", 0.01)
    herd_process("worker", **env)
    base = f"http://{env['HERD_WORKER_HEALTH_ADDR']}"
    await asyncio.to_thread(wait_for_http, f"{base}/readyz")
    await asyncio.to_thread(wait_for_http, f"{base}/healthz")


async def test_worker_killed_mid_stream_gives_one_error_line(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    client = await api(heartbeat_interval_s=0.2)
    child = herd_process("worker", **_worker_env(redis_url, "victim", 0.2))
    await _until_advertised(redis, "victim")
    async with client.stream("POST", "/api/chat", json=CHAT) as response:
        lines = response.aiter_lines()
        assert orjson.loads(await anext(lines))["done"] is False
        child.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        rest = [orjson.loads(line) async for line in lines if line]
    assert rest[-1] == {"error": WORKER_LOST}
    assert not any(line.get("done") for line in rest)
    assert time.monotonic() - killed < TTL_S + 2


async def test_job_of_a_dead_worker_that_sent_nothing_runs_elsewhere(
    api: ApiFactory,
    worker: WorkerFactory,
    herd_process: ProcessFactory,
    redis: Redis,
    redis_url: str,
) -> None:
    """A worker SIGSTOPped after claiming (so it never starts) is taken over once dead."""
    client = await api(heartbeat_interval_s=0.2)
    child = herd_process("worker", **_worker_env(redis_url, "frozen", 0.01))
    await _until_advertised(redis, "frozen")
    child.send_signal(signal.SIGSTOP)  # claims nothing new, holds nothing yet
    stream = keys.job_stream("gemma3:270m")
    request = asyncio.create_task(client.post("/api/chat", json={**CHAT, "stream": False}))
    while not await redis.xlen(stream):
        await asyncio.sleep(0.01)
    # claim it under the frozen worker's name: pending there, never started
    await redis.xreadgroup(keys.JOB_GROUP, "frozen", {stream: ">"}, count=1)
    rescuer = await worker(worker_id="rescuer", heartbeat_interval_s=0.2)
    reply = await request
    assert reply.status_code == 200 and reply.json()["done"] is True
    assert len(rescuer.engine.seen) == 1  # type: ignore[attr-defined]
    child.send_signal(signal.SIGKILL)


async def test_sigterm_drains_in_flight_jobs_and_withdraws(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    client = await api()
    child = herd_process("worker", **_worker_env(redis_url, "draining", 0.1))
    await _until_advertised(redis, "draining")
    async with client.stream("POST", "/api/chat", json=CHAT) as response:
        lines = response.aiter_lines()
        assert orjson.loads(await anext(lines))["done"] is False
        child.send_signal(signal.SIGTERM)
        rest = [orjson.loads(line) async for line in lines if line]
    assert rest[-1]["done"] is True and rest[-1]["done_reason"] == "stop"
    assert await asyncio.to_thread(child.wait, 10) == 0
    assert not await redis.exists(keys.worker_key("draining"))


async def test_a_worker_process_loads_on_a_job_and_unloads_on_request(
    herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    env = {**_worker_env(redis_url, "resident", 0.01), "HERD_FAKE_MODELS": '["a:1", "b:1"]'}
    herd_process("worker", **env)
    await _until_advertised(redis, "resident")
    events = await run_job(redis, make_job("b:1", kind="load", messages=[], keep_alive_s=-1))
    assert isinstance(events[-1], DoneEvent) and events[-1].done_reason == "load"
    loaded = {m.name for m in (await read_advert(redis, "resident")).loaded}
    assert loaded == {"a:1", "b:1"}
    fields = ControlMessage(action="unload", model="b:1").to_fields()
    await redis.xadd(keys.control_stream("resident"), dict(fields))  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while "b:1" in {m.name for m in (await read_advert(redis, "resident")).loaded}:
        assert time.monotonic() < deadline, "b:1 was never unloaded"
        await asyncio.sleep(0.05)
