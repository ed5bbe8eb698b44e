"""A worker's /metrics on its health port: the names dashboards use, moving as jobs run."""

from __future__ import annotations

import asyncio

import httpx
from redis.asyncio import Redis

from shared.messages import DoneEvent
from tests.conftest import (
    ProcessFactory,
    WorkerFactory,
    make_job,
    run_job,
    wait_for_http,
    worker_env,
)
from tests.metrics_text import parse, value
from worker.health import create_health_app

WORKER_FAMILIES = {
    # families as the parser names them: a counter without its _total
    "herd_tokens_generated": "counter",
    "herd_prompt_tokens": "counter",
    "herd_jobs": "counter",
    "herd_worker_slots": "gauge",
    "herd_device_memory_bytes": "gauge",
    "herd_model_load_seconds": "histogram",
    "herd_models_loaded": "gauge",
}


async def test_metrics_move_as_jobs_run(worker: WorkerFactory, redis: Redis) -> None:
    w = await worker()
    app = create_health_app(lambda: (True, ""), w.metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        response = await client.get("/metrics")
        assert response.status_code == 200
        types, samples = parse(response.text)
        assert {name: types.get(name) for name in WORKER_FAMILIES} == WORKER_FAMILIES
        model = {"model": "gemma3:270m"}
        assert value(samples, "herd_models_loaded") == 1
        assert value(samples, "herd_model_load_seconds_count", **model) == 1
        slots = w.engine.slots("gemma3:270m")
        assert value(samples, "herd_worker_slots", state="free", **model) == slots > 0
        assert value(samples, "herd_worker_slots", state="busy", **model) == 0
        memory = {labels for name, labels in samples if name == "herd_device_memory_bytes"}
        assert {dict(labels)["kind"] for labels in memory} == {"total", "free", "used"}

        done = []
        for _ in range(2):
            events = await run_job(redis, make_job())
            assert isinstance(events[-1], DoneEvent)
            done.append(events[-1])
        # the job counter moves, and the slot frees, just after the done event is out
        for _ in range(50):
            _, samples = parse((await client.get("/metrics")).text)
            ended = value(samples, "herd_jobs_total", outcome=done[0].done_reason, **model)
            if ended == 2 and value(samples, "herd_worker_slots", state="busy", **model) == 0:
                break
            await asyncio.sleep(0.02)
        jobs = {labels for name, labels in samples if name == "herd_jobs_total"}
        assert jobs == {frozenset({**model, "outcome": done[0].done_reason}.items())}
        assert value(samples, "herd_jobs_total", outcome=done[0].done_reason, **model) == 2
        decoded = sum(d.n_decoded for d in done)
        prompt = sum(d.n_prompt_tokens for d in done)
        assert value(samples, "herd_tokens_generated_total", **model) == decoded > 0
        assert value(samples, "herd_prompt_tokens_total", **model) == prompt > 0
        assert value(samples, "herd_worker_slots", state="busy", **model) == 0


async def test_a_worker_process_serves_metrics_on_its_health_port(
    herd_process: ProcessFactory, redis_url: str
) -> None:
    env = worker_env(redis_url, "scraped")
    herd_process("worker", **env)
    base = f"http://{env['HERD_WORKER_HEALTH_ADDR']}"
    await asyncio.to_thread(wait_for_http, f"{base}/readyz")
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    types, samples = parse(response.text)
    assert {name: types.get(name) for name in WORKER_FAMILIES} == WORKER_FAMILIES
    assert value(samples, "herd_models_loaded") == 1
