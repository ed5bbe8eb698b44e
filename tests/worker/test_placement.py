"""Placement across real ``herd worker`` processes (FakeEngine, fake device sizes) and a
real Redis: one load per cold model, replicas for hot ones, no thrash, no lost model."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.messages import DoneEvent, StartedEvent
from tests.conftest import (
    ApiFactory,
    ProcessFactory,
    make_job,
    process_log,
    read_advert,
    run_job,
    worker_env,
)
from tests.polling import until


def _env(redis_url: str, worker_id: str, models: list[str], **extra: Any) -> dict[str, str]:
    return worker_env(redis_url, worker_id, fake_models=models, shutdown_grace_s=2, **extra)


async def _advertised(redis: Redis, *worker_ids: str) -> None:
    async def all_up() -> bool:
        return all([await redis.exists(keys.worker_key(w)) for w in worker_ids])

    await until(all_up, timeout_s=30)


def _loads(children: list[Any], model: str | None = None) -> Counter[str]:
    """Loads per model (``model_resident`` log lines) across the given processes."""
    found: Counter[str] = Counter()
    for child in children:
        for line in process_log(child):
            if line.get("event") == "model_resident" and model in (None, line["model"]):
                found[line["model"]] += 1
    return found


async def test_one_worker_loads_a_cold_model_for_a_waiting_job(
    herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    ids = ["p0", "p1", "p2"]
    children = [
        herd_process("worker", **_env(redis_url, w, ["warm:1", "cold:1"], fake_load_delay_s=0.5))
        for w in ids
    ]
    await _advertised(redis, *ids)
    events = await run_job(redis, make_job("cold:1"), timeout_s=20)
    assert isinstance(events[-1], DoneEvent)
    await asyncio.sleep(1.0)  # a second load, if one were coming, would have started
    holders = [w for w in ids if "cold:1" in {m.name for m in (await read_advert(redis, w)).loaded}]
    assert len(holders) == 1
    assert _loads(children, "cold:1") == Counter({"cold:1": 1})


async def test_a_model_that_fits_on_no_worker_is_a_507(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    client = await api()
    for w in ("m0", "m1"):
        models = ["small:1=1GiB", "big:1=12GiB"]
        herd_process("worker", **_env(redis_url, w, models, fake_memory="10GiB"))
    await _advertised(redis, "m0", "m1")
    started = time.monotonic()
    response = await client.post("/api/generate", json={"model": "big:1", "prompt": "hi"})
    assert response.status_code == 507
    assert "memory" in response.json()["error"]
    assert time.monotonic() - started < 5  # answered, not left to the queue timeout
    ok = await client.post(
        "/api/generate", json={"model": "small:1", "prompt": "hi", "stream": False}
    )
    assert ok.status_code == 200


async def test_a_hot_model_gains_a_replica_on_another_worker(
    herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    ids = ["h0", "h1"]
    for w in ids:
        env = _env(
            redis_url,
            w,
            ["idle:1", "hot:1"],
            num_parallel=1,
            fake_token_delay_s=0.1,  # about 1.3 s a job
            scale_out_wait_s=0.5,
            scale_cooldown_s=0.5,
        )
        herd_process("worker", **env)
    await _advertised(redis, *ids)
    results = await asyncio.gather(*(run_job(redis, make_job("hot:1"), 30) for _ in range(6)))
    starters = {e.worker_id for events in results for e in events if isinstance(e, StartedEvent)}
    assert all(isinstance(events[-1], DoneEvent) for events in results)
    assert starters == set(ids)  # both served: the second got a replica while jobs waited


async def test_a_model_unloaded_after_its_load_loads_again_without_the_cooldown(
    herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    """keep_alive 0 (Open WebUI unloads so): each request loads the model anew, and the
    cooldown its load ticket keeps for the next scale-out must not make it wait."""
    herd_process("worker", **_env(redis_url, "k0", ["m:1"], scale_cooldown_s=60))
    await _advertised(redis, "k0")

    async def unloaded() -> bool:
        return not (await read_advert(redis, "k0")).loaded

    # the model loaded at the start goes with its first job; then each job loads it
    await run_job(redis, make_job("m:1", keep_alive_s=0), timeout_s=20)
    for _ in range(3):
        await until(unloaded, timeout_s=10)  # the next job waits for a load
        started = time.monotonic()
        events = await run_job(redis, make_job("m:1", keep_alive_s=0), timeout_s=20)
        assert isinstance(events[-1], DoneEvent)
        assert time.monotonic() - started < 10  # not the cooldown's 60 s


async def test_a_zipf_mix_of_five_models_on_four_workers_is_served_without_thrash(
    herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    models = [f"z{i}:1=4GiB" for i in range(5)]
    ids = [f"z{i}" for i in range(4)]
    children = [
        herd_process(
            "worker",
            **_env(redis_url, w, models, fake_memory="6GiB", num_parallel=2, fake_load_delay_s=0.2),
        )
        for w in ids
    ]
    await _advertised(redis, *ids)
    rng = random.Random(7)
    weights = [1 / (rank + 1) for rank in range(5)]  # Zipf(1) popularity

    async def client() -> list[Any]:
        answers = []
        for _ in range(6):
            model = rng.choices([f"z{i}:1" for i in range(5)], weights)[0]
            answers.append(await run_job(redis, make_job(model), timeout_s=30))
        return answers

    answers = [a for batch in await asyncio.gather(*(client() for _ in range(8))) for a in batch]
    assert len(answers) == 48 and all(isinstance(a[-1], DoneEvent) for a in answers)
    # one model fits a worker at a time and five are asked for: models must take turns,
    # but each load serves a run of jobs; thrash would load about once per job
    loads = _loads(children)
    assert sum(loads.values()) <= len(models) + len(ids)


async def test_a_worker_killed_while_loading_leaves_the_model_placeable(
    herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    ids = ["k0", "k1"]
    children = {
        w: herd_process("worker", **_env(redis_url, w, ["warm:1", "cold:1"], fake_load_delay_s=2))
        for w in ids
    }
    await _advertised(redis, *ids)
    job = run_job(redis, make_job("cold:1"), timeout_s=30)
    waiting = asyncio.create_task(job)

    holder: bytes | None = None

    async def ticket_taken() -> bool:
        nonlocal holder
        holders: list[bytes] = await redis.hkeys(keys.load_ticket("cold:1"))  # type: ignore[misc]
        holder = holders[0] if holders else None
        return holder is not None

    await until(ticket_taken, timeout_s=10)
    assert holder is not None
    children[holder.decode()].send_signal(signal.SIGKILL)
    events = await waiting
    started = next(e for e in events if isinstance(e, StartedEvent))
    assert isinstance(events[-1], DoneEvent)
    assert started.worker_id != holder.decode()
