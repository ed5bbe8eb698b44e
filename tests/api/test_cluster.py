"""Herd's own routes: GET /api/cluster, POST /api/scale, and 507 for a model that fits on
no worker, over real HTTP against real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.messages import DeviceInfo, LoadedModel, ReplicaPolicy, WorkerAdvert
from tests.api.conftest import advert, advertise
from tests.conftest import ApiFactory, WorkerFactory
from tests.polling import until
from worker.fake_engine import REPLY

GIB = 2**30
GEMMA = advert("gemma3:270m", digest="a" * 64, memory_bytes=2 * GIB)
OLDER = advert("older:latest", digest="b" * 64, memory_bytes=GIB)
SCALE = "Go struct field ScaleRequest"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": False}


async def publish(redis: Redis, worker: WorkerAdvert, ttl_s: float = 30.0) -> None:
    """Write ``worker``'s advert as its heartbeat does."""
    await redis.set(
        keys.worker_key(worker.worker_id), worker.model_dump_json(), px=int(ttl_s * 1000)
    )
    await redis.zadd(keys.WORKERS_INDEX, {worker.worker_id: time.time() + ttl_s})


def worker_advert(worker_id: str, **fields: object) -> WorkerAdvert:
    values: dict[str, object] = {
        "worker_id": worker_id,
        "host": f"host-{worker_id}",
        "version": "0.1.0",
        "engine": "fake",
        "devices": [],
        "models": [GEMMA],
        "slots_total": 0,
        "slots_free": 0,
        "ready": True,
        "started_at": "2026-01-01T00:00:00Z",
    }
    values.update(fields)
    return WorkerAdvert.model_validate(values)


async def test_cluster_shows_workers_replicas_queues_and_policies(
    api: ApiFactory, redis: Redis
) -> None:
    gpu = DeviceInfo(kind="gpu", name="H100", total_bytes=80 * GIB, free_bytes=70 * GIB)
    loaded = LoadedModel(
        name="gemma3:270m", size_bytes=GIB, size_vram=GIB, context_length=4096,
        expires_at="2026-05-01T12:00:00Z", busy=1, slots=4,
    )  # fmt: skip
    await publish(
        redis,
        worker_advert(
            "w1", devices=[gpu], models=[GEMMA, OLDER], loaded=[loaded], loading=["older:latest"],
            slots_total=4, slots_free=3, memory_total=72 * GIB, memory_free=70 * GIB,
            tokens_generated={"gemma3:270m": 120, "older:latest": 3},
        ),
    )  # fmt: skip
    await publish(redis, worker_advert("w0", tokens_generated={"gemma3:270m": 5}))
    # gemma: one job taken by a worker, two waiting, the oldest for about two seconds
    stream = keys.job_stream("gemma3:270m")
    await redis.xgroup_create(stream, keys.JOB_GROUP, id="0", mkstream=True)
    now_ms = int(time.time() * 1000)
    for age_ms in (3000, 2000, 1000):
        await redis.xadd(stream, {"job": b"{}"}, id=f"{now_ms - age_ms}-0")
    await redis.xreadgroup(keys.JOB_GROUP, "w1", {stream: ">"}, count=1)
    client = await api()
    scaled = await client.post(
        "/api/scale", json={"model": "Gemma3:270M", "min_replicas": 1, "max_replicas": 2}
    )
    assert scaled.status_code == 200
    assert scaled.json() == {
        "model": "gemma3:270m",
        "policy": {"min_replicas": 1, "max_replicas": 2},
    }

    data = (await client.get("/api/cluster")).json()
    assert [w["id"] for w in data["workers"]] == ["w0", "w1"]
    assert data["workers"][1] == {
        "id": "w1",
        "host": "host-w1",
        "version": "0.1.0",
        "engine": "fake",
        "ready": True,
        "started_at": "2026-01-01T00:00:00Z",
        "devices": [{"name": "H100", "kind": "gpu", "total": 80 * GIB, "free": 70 * GIB}],
        "memory_total": 72 * GIB,
        "memory_free": 70 * GIB,
        "slots": {"total": 4, "free": 3},
        "tokens_generated": 123,
        "loading": ["older:latest"],
        "loaded": [
            {
                "name": "gemma3:270m",
                "size": GIB,
                "size_vram": GIB,
                "context_length": 4096,
                "slots": {"total": 4, "busy": 1},
                "expires_at": "2026-05-01T12:00:00Z",
            }
        ],
    }
    gemma = data["models"]["gemma3:270m"]
    assert 1.9 <= gemma.pop("oldest_wait_s") < 10
    assert gemma == {
        "replicas": ["w1"],
        "loading": [],
        "waiting": 2,
        "pending": 1,
        "policy": {"min_replicas": 1, "max_replicas": 2},
        "tokens_generated": 125,  # both workers' counts
    }
    assert data["models"]["older:latest"] == {
        "replicas": [],
        "loading": ["w1"],
        "waiting": 0,
        "oldest_wait_s": 0,
        "pending": 0,
        "policy": None,
        "tokens_generated": 3,
    }


async def test_cluster_of_a_running_worker(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    assert (await client.get("/api/cluster")).json() == {"workers": [], "models": {}}
    await worker(worker_id="solo", fake_models=["tiny:1"])
    answer = await client.post("/api/chat", json={"model": "tiny:1", **CHAT})
    assert answer.json()["message"]["content"] == REPLY

    async def counted() -> bool:  # the next heartbeat carries the answer's tokens
        cluster = (await client.get("/api/cluster")).json()
        return bool(cluster["models"]["tiny:1"]["tokens_generated"] == answer.json()["eval_count"])

    await until(counted, timeout_s=10)
    data = (await client.get("/api/cluster")).json()
    (solo,) = data["workers"]
    assert solo["id"] == "solo" and solo["ready"] is True and solo["devices"]
    assert [m["name"] for m in solo["loaded"]] == ["tiny:1"]
    assert solo["slots"]["free"] == solo["slots"]["total"] > 0
    assert data["models"] == {
        "tiny:1": {
            "replicas": ["solo"],
            "loading": [],
            "waiting": 0,
            "oldest_wait_s": 0,
            "pending": 0,
            "policy": None,
            "tokens_generated": answer.json()["eval_count"],
        }
    }


async def test_queue_of_a_model_no_worker_has_taken_anything_of(
    api: ApiFactory, redis: Redis
) -> None:
    # jobs sent while no worker has created the group yet: all of them wait
    await publish(redis, worker_advert("w1"))
    stream = keys.job_stream("gemma3:270m")
    await redis.xadd(stream, {"job": b"{}"}, id=f"{int(time.time() * 1000) - 5000}-0")
    await redis.xadd(stream, {"job": b"{}"})
    gemma = (await (await api()).get("/api/cluster")).json()["models"]["gemma3:270m"]
    assert (gemma["waiting"], gemma["pending"]) == (2, 0)
    assert 4.9 <= gemma["oldest_wait_s"] < 30


async def test_scale_sets_replaces_and_removes_the_policy(api: ApiFactory, redis: Redis) -> None:
    await advertise(redis, [GEMMA])
    client = await api()
    await client.post("/api/copy", json={"source": "gemma3:270m", "destination": "mine"})

    async def policy() -> ReplicaPolicy | None:
        raw = await redis.hget(keys.POLICIES, "gemma3:270m")  # type: ignore[misc]
        return None if raw is None else ReplicaPolicy.model_validate_json(raw)

    # an alias names its served model, whose policy it sets
    answer = await client.post("/api/scale", json={"model": "mine", "min_replicas": 2})
    assert answer.json() == {
        "model": "gemma3:270m",
        "policy": {"min_replicas": 2, "max_replicas": None},
    }
    assert await policy() == ReplicaPolicy(min_replicas=2)
    body = {"model": "gemma3:270m", "min_replicas": 0, "max_replicas": 1}
    assert (await client.post("/api/scale", json=body)).status_code == 200
    assert await policy() == ReplicaPolicy(min_replicas=0, max_replicas=1)
    assert (await client.get("/api/cluster")).json()["models"]["gemma3:270m"]["policy"] == {
        "min_replicas": 0,
        "max_replicas": 1,
    }
    removed = await client.post("/api/scale", json={"model": "gemma3:270m", "min_replicas": 0})
    assert removed.json() == {"model": "gemma3:270m", "policy": None}
    assert await policy() is None
    assert await redis.hlen(keys.POLICIES) == 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"min_replicas": 1}, 400, "model is required"),
        ({"model": "bad name", "min_replicas": 1}, 400, "invalid model name"),
        ({"model": "gemma3:270m"}, 400, "min_replicas is required"),
        ({"model": "gemma3:270m", "min_replicas": -1}, 400, "min_replicas must be 0 or more"),
        ({"model": "gemma3:270m", "min_replicas": 3, "max_replicas": 2}, 400,
         "max_replicas must be at least 1 and at least min_replicas"),
        ({"model": "gemma3:270m", "min_replicas": 0, "max_replicas": 0}, 400,
         "max_replicas must be at least 1 and at least min_replicas"),
        ({"model": "gemma3:270m", "min_replicas": "2"}, 400,
         f"json: cannot unmarshal string into {SCALE}.min_replicas of type int"),
        ({"model": "nope", "min_replicas": 1}, 404, "model 'nope:latest' not found"),
    ],
)  # fmt: skip
async def test_scale_errors(
    api: ApiFactory, redis: Redis, body: dict[str, object], status: int, error: str
) -> None:
    await advertise(redis, [GEMMA])
    response = await (await api()).post("/api/scale", json=body)
    assert (response.status_code, response.json()) == (status, {"error": error})
    assert await redis.hlen(keys.POLICIES) == 0  # type: ignore[misc]


async def test_a_model_that_fits_on_no_worker_is_507(api: ApiFactory, redis: Redis) -> None:
    big = advert("big:latest", memory_bytes=12 * GIB)
    await publish(redis, worker_advert("small", models=[big], memory_total=10 * GIB))
    await publish(redis, worker_advert("smaller", models=[big], memory_total=8 * GIB))
    client = await api(queue_timeout_s=0.5)
    error = {"error": "model requires more memory (12.0 GiB) than any worker has (10.0 GiB)"}
    for path, body in [
        ("/api/chat", {"model": "big", **CHAT}),
        ("/api/generate", {"model": "big", "prompt": "hi"}),  # streamed: before the first byte
        ("/api/generate", {"model": "big"}),  # a load
        ("/api/embed", {"model": "big", "input": "hi"}),
    ]:
        response = await client.post(path, json=body)
        assert (response.status_code, response.json()) == (507, error), path
    assert await redis.xlen(keys.job_stream("big:latest")) == 0  # nothing was queued
    # one worker that does not tell its memory may have room: the request waits for it
    await publish(redis, worker_advert("unknown", models=[big]))
    await asyncio.sleep(0.6)  # the registry's cache
    waited = await client.post("/api/chat", json={"model": "big", **CHAT})
    assert waited.status_code == 503 and "timed out" in waited.json()["error"]


async def test_an_in_process_worker_too_small_for_its_model_gives_507(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    await worker(fake_models=["big:latest=12GiB", "tiny:1"], fake_memory="10GiB")
    response = await client.post("/api/chat", json={"model": "big", **CHAT})
    assert response.status_code == 507
    message = response.json()["error"]
    assert message.startswith("model requires more memory (12.0 GiB) than any worker has (")
    # the worker's other model still runs
    answer = await client.post("/api/chat", json={"model": "tiny:1", **CHAT})
    assert answer.status_code == 200


async def test_ollama_routes_keep_their_shapes(api: ApiFactory, redis: Redis) -> None:
    await advertise(redis, [GEMMA])
    client = await api()
    assert set((await client.get("/api/ps")).json()) == {"models"}
    assert set((await client.get("/api/tags")).json()) == {"models"}
    assert (await client.post("/api/cluster")).status_code == 405
    assert (await client.get("/api/scale")).status_code == 405
