"""A cluster without a shared volume: each worker has a store of its own, and a model the
cluster pulled from a registry into one of them is pulled by another worker into its own
store when placement has that worker load it (``worker.serving.StoreServing.fetch``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from shared import keys, names
from shared.store import Store
from tests.api.test_pull import PULLERS, check_store, model_of, pull
from tests.conftest import ApiFactory, ProcessFactory, read_advert, worker_env
from tests.registry import Registry, host_of, serving, tiny_gguf

MIB = 1 << 20


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = Registry()
    reg.add_model("library/tiny:latest", tiny_gguf(tmp_path / "t.gguf", weights=MIB))
    async with serving(reg):
        yield reg


async def _until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():  # type: ignore[operator]
            return
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_worker_pulls_into_its_own_store_a_model_another_pulled(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    stores = {w: tmp_path / w for w in ("wa", "wb")}
    for w, store in stores.items():
        env = worker_env(redis_url, w, models_dir=store, fake_memory="10GiB")
        herd_process("worker", **env)

    async def both_up() -> bool:
        if not await redis.exists(PULLERS):
            return False
        return all([await redis.exists(keys.worker_key(w)) for w in stores])

    await _until(both_up, 60, "the workers never started")
    client = await api()
    name = f"{host_of(registry)}/library/tiny"
    model = names.normalize(name)
    status, lines = await pull(client, model=name, insecure=True, stream=False)
    assert status == 200 and lines[-1] == {"status": "success"}, lines
    first = [w for w, s in stores.items() if Store(s).get(model) is not None]
    assert len(first) == 1  # one store has it; the other worker may fetch it
    other = next(w for w in stores if w not in first)
    source = await redis.hget(keys.STORE_SOURCES, model)  # type: ignore[misc]
    assert orjson.loads(source or b"{}") == {"insecure": True}  # where the fetch pulls from

    response = await client.post("/api/scale", json={"model": name, "min_replicas": 2})
    assert response.status_code == 200, response.text

    async def loaded_on_both() -> bool:
        adverts = [await read_advert(redis, w) for w in stores]
        return all(model in {m.name for m in a.loaded} for a in adverts)

    await _until(loaded_on_both, 30, "the model was not loaded on both workers")
    check_store(stores[other], name, model_of(registry))
    response = await client.post(
        "/api/chat",
        json={"model": name, "messages": [{"role": "user", "content": "hi"}], "stream": False},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["done"] is True
    # the second worker's advert carries the model as one of its store's now
    advert = await read_advert(redis, other)
    assert model in {m.name for m in advert.models}
