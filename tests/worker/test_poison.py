"""Poison jobs over real worker processes: a job whose runs kill workers is set aside after
``HERD_MAX_ATTEMPTS`` of them, answered with one error, and listed by ``herd dlq``."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from shared import keys
from tests.cli.conftest import verb_caller
from tests.conftest import ApiFactory, ProcessFactory, make_job, run_job, worker_env
from tests.polling import until
from worker.fake_engine import CRASH_MARKER


async def _up(redis: Redis, *ids: str) -> None:
    async def all_up() -> bool:
        return all([await redis.exists(keys.worker_key(w)) for w in ids])

    await until(all_up, timeout_s=30)


async def test_a_job_that_kills_its_workers_is_set_aside_with_one_error(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    client = await api()
    ids = ["v0", "v1", "v2"]
    children = [herd_process("worker", **worker_env(redis_url, w)) for w in ids]
    await _up(redis, *ids)
    body = {"model": "gemma3:270m", "prompt": f"hi {CRASH_MARKER}", "stream": False}
    started = time.monotonic()
    answer = await client.post("/api/generate", json=body, timeout=60)
    assert answer.status_code == 500
    assert "set aside" in answer.json()["error"]
    assert time.monotonic() - started < 20
    # two workers died (the default HERD_MAX_ATTEMPTS), the third set it aside
    assert sorted(child.poll() is None for child in children) == [False, False, True]
    call = verb_caller(str(client.base_url))
    listing = await call("dlq", "list", None)
    [entry] = (await client.get("/api/dlq")).json()["entries"]
    assert entry["attempts"] == 2 and entry["model"] == "gemma3:270m"
    assert entry["id"] in listing
    await call("dlq", "drop", entry["id"])
    assert (await client.get("/api/dlq")).json()["entries"] == []
    assert (await client.delete(f"/api/dlq/{entry['id']}")).status_code == 404
    for bad in ("not-an-id", "1-2-3", "9" * 30 + "-0"):
        assert (await client.post(f"/api/dlq/{bad}/retry")).status_code == 404
        assert (await client.delete(f"/api/dlq/{bad}")).status_code == 404


async def test_a_dead_workers_jobs_are_reclaimed_together(
    herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    doomed = herd_process(
        "worker", **worker_env(redis_url, "doomed", num_parallel=8, fake_token_delay_s=0.5)
    )
    await _up(redis, "doomed")
    jobs = [asyncio.create_task(run_job(redis, make_job(), timeout_s=30)) for _ in range(6)]

    async def all_running() -> bool:
        pending = await redis.xpending(keys.job_stream("gemma3:270m"), keys.JOB_GROUP)
        return bool(pending["pending"] == 6)

    await until(all_running, timeout_s=10)
    # a slow janitor: it looks for orphans once a second, with room for all of them
    herd_process(
        "worker", **worker_env(redis_url, "heir", num_parallel=8, heartbeat_interval_s=1.0)
    )
    await _up(redis, "heir")
    doomed.kill()
    killed = time.monotonic()
    results = await asyncio.gather(*jobs)
    # one job per look would take 6 looks (about 6 s) past the advert's expiry
    assert time.monotonic() - killed < 1.0 + 3.0
    for events in results:
        assert events[-1].type == "done"
