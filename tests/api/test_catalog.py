"""The catalog of models seen: a model a worker served stays known while no worker that
serves it is up (its requests wait for one), over real Redis and in-process workers."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from api.aliases import Aliases
from api.registry import Registry
from shared import keys
from shared.messages import ModelAdvert
from tests.api.conftest import advert, advertise
from tests.conftest import ApiFactory, WorkerFactory
from tests.polling import until
from worker.fake_engine import REPLY

CHAT = {"model": "tiny:1", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def _catalog(redis: Redis) -> dict[str, ModelAdvert]:
    raw = await redis.hgetall(keys.CATALOG_SEEN)  # type: ignore[misc]
    return {k.decode(): ModelAdvert.model_validate_json(v) for k, v in raw.items()}


async def _no_worker(redis: Redis) -> bool:
    return bool(await redis.zcard(keys.WORKERS_INDEX) == 0)


async def test_a_request_for_a_model_seen_earlier_waits_for_a_worker(
    api: ApiFactory, worker: WorkerFactory, redis: Redis
) -> None:
    client = await api()
    first = await worker(worker_id="first", fake_models=["tiny:1"])
    assert (await client.post("/api/chat", json=CHAT)).json()["message"]["content"] == REPLY
    first.stop()  # it withdraws its advert: no live worker serves tiny:1 now
    await until(lambda: _no_worker(redis), message="the worker's advert stayed")
    answer = asyncio.create_task(client.post("/api/chat", json=CHAT))
    stream = keys.job_stream("tiny:1")
    await until(lambda: redis.xlen(stream), message="the request was not queued")
    assert not answer.done()
    await worker(worker_id="second", fake_models=["tiny:1"])
    response = await asyncio.wait_for(answer, 10)
    assert response.status_code == 200
    assert response.json()["message"]["content"] == REPLY


async def test_a_seen_model_is_listed_shown_and_deletable_without_workers(
    api: ApiFactory, worker: WorkerFactory, redis: Redis
) -> None:
    client = await api(queue_timeout_s=0.5)
    gone = await worker(worker_id="gone", fake_models=["tiny:1"])
    assert [m["name"] for m in (await client.get("/api/tags")).json()["models"]] == ["tiny:1"]
    gone.stop()
    await until(lambda: _no_worker(redis), message="the worker's advert stayed")
    # tags lists what the cluster has, loaded or not and with its workers up or not
    assert [m["name"] for m in (await client.get("/api/tags")).json()["models"]] == ["tiny:1"]
    assert (await client.post("/api/show", json={"model": "tiny:1"})).status_code == 200
    assert (await client.get("/api/ps")).json() == {"models": []}
    # nobody comes before the deadline: 503, as for any job no worker takes
    waited = await client.post("/api/chat", json=CHAT)
    assert waited.status_code == 503 and "timed out" in waited.json()["error"]
    deleted = await client.request("DELETE", "/api/delete", json={"model": "tiny:1"})
    assert deleted.status_code == 200
    assert (await client.get("/api/tags")).json() == {"models": []}
    refused = await client.post("/api/chat", json=CHAT)
    assert refused.status_code == 404 and refused.json() == {"error": "model 'tiny:1' not found"}


async def test_a_model_never_seen_is_404(api: ApiFactory, redis: Redis) -> None:
    await advertise(redis, [advert("known:latest")])
    client = await api()
    response = await client.post("/api/generate", json={"model": "unknown", "prompt": "x"})
    assert response.json() == {"error": "model 'unknown' not found"}
    assert set(await _catalog(redis)) == {"known:latest"}


async def test_the_catalog_is_written_when_a_model_is_new_or_its_digest_changes(
    redis: Redis,
) -> None:
    registry = Registry(redis)
    await advertise(redis, [advert("m:latest", digest="a" * 64)])
    await registry.workers(fresh=True)
    assert (await _catalog(redis))["m:latest"].digest == "a" * 64
    # an unchanged digest costs no write (the marker stays)
    marked = advert("m:latest", digest="a" * 64, family="marker").model_dump_json()
    await redis.hset(keys.CATALOG_SEEN, "m:latest", marked)  # type: ignore[misc]
    await advertise(redis, [advert("m:latest", digest="a" * 64, memory_bytes=5)])
    await registry.workers(fresh=True)
    assert (await _catalog(redis))["m:latest"].family == "marker"
    # a new file under the name is recorded
    await advertise(redis, [advert("m:latest", digest="b" * 64)])
    await registry.workers(fresh=True)
    assert (await _catalog(redis))["m:latest"].digest == "b" * 64
    # two workers serving two files under one name: the recorded one stands, no flip-flop
    await advertise(redis, [advert("m:latest", digest="c" * 64)], worker_id="w2")
    await registry.workers(fresh=True)
    await redis.hset(keys.CATALOG_SEEN, "m:latest", marked)  # type: ignore[misc]
    for _ in range(3):
        await registry.workers(fresh=True)
    assert (await _catalog(redis))["m:latest"].family == "marker"


async def test_a_pod_writes_back_what_redis_lost(redis: Redis) -> None:
    registry = Registry(redis)
    await advertise(redis, [advert("a:latest"), advert("b:latest")], ttl_s=0.3)
    await registry.workers(fresh=True)
    assert set(await _catalog(redis)) == {"a:latest", "b:latest"}
    await redis.flushdb()  # a Redis restart without persistence: adverts and catalog gone
    # until a worker advertises again, the pod still knows what it saw
    found = await registry.find("a:latest")
    assert found is not None and found.name == "a:latest"
    assert await registry.find("c:latest") is None
    await advertise(redis, [advert("b:latest")])
    await registry.workers(fresh=True)
    assert set(await _catalog(redis)) == {"a:latest", "b:latest"}
    # another pod, started after the restart, knows both
    other = Aliases(redis, Registry(redis))
    assert {entry.name for entry in await other.entries()} == {"a:latest", "b:latest"}


@pytest.mark.parametrize("fresh", [False, True])
async def test_models_are_the_served_ones_over_the_catalogs(redis: Redis, fresh: bool) -> None:
    await redis.hset(  # type: ignore[misc]
        keys.CATALOG_SEEN,
        mapping={
            "old:latest": advert("old:latest").model_dump_json(),
            "m:latest": advert("m:latest", digest="a" * 64).model_dump_json(),
        },
    )
    await advertise(redis, [advert("m:latest", digest="b" * 64)])
    registry = Registry(redis)
    models = await registry.models(fresh=fresh)
    assert {name: m.digest for name, m in models.items()} == {
        "old:latest": "d" * 64,
        "m:latest": "b" * 64,
    }
    assert set(await registry.served()) == {"m:latest"}
