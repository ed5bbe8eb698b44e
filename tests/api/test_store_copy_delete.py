"""/api/copy and /api/delete of models in the store: a real second manifest, a delete that
removes the model's own blobs (never one another model names) and unloads it everywhere,
the store's version bumped; models outside the store keep their aliases and deletions."""

from __future__ import annotations

from pathlib import Path

import httpx
from redis.asyncio import Redis

from shared import keys
from shared.messages import ControlMessage, LoadedModel
from shared.store import MediaType, Store
from tests.api.conftest import advert, advertise
from tests.api.test_create import tiny_gguf, upload
from tests.conftest import ApiFactory, WorkerFactory


async def _two_models(client: httpx.AsyncClient, tmp_path: Path) -> str:
    """``base`` from a GGUF, ``derived`` from it with a system prompt of its own."""
    digest = await upload(client, tiny_gguf(tmp_path / "tiny.gguf").read_bytes())
    for body in (
        {"model": "base", "files": {"tiny.gguf": digest}, "system": "base prompt"},
        {"model": "derived", "from": "base", "system": "derived prompt"},
    ):
        response = await client.post("/api/create", json={**body, "stream": False})
        assert response.status_code == 200, response.text
    return digest


async def _version(redis: Redis) -> int:
    return int(await redis.get(keys.STORE_VERSION) or 0)


async def test_copy_writes_a_second_manifest(api: ApiFactory, redis: Redis, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    client = await api(models_dir=store.root)
    await _two_models(client, tmp_path)
    before = await _version(redis)
    copied = await client.post("/api/copy", json={"source": "Base", "destination": "ns/copy:v1"})
    assert copied.status_code == 200 and copied.content == b""
    base, copy = store.get("base"), store.get("ns/copy:v1")
    assert base is not None and copy is not None
    assert copy.manifest == base.manifest and copy.digest == base.digest
    assert await _version(redis) == before + 1
    # the copy is a model of its own: deleting the source leaves it whole
    await client.request("DELETE", "/api/delete", json={"model": "base"})
    assert all(store.has_blob(layer.digest) for layer in copy.manifest.blobs())


async def test_copy_of_a_missing_model_is_a_404(api: ApiFactory, tmp_path: Path) -> None:
    client = await api(models_dir=tmp_path / "store")
    response = await client.post("/api/copy", json={"source": "nope", "destination": "x"})
    assert (response.status_code, response.json()) == (404, {"error": 'model "nope" not found'})
    bad = await client.post("/api/copy", json={"source": "nope", "destination": "a/b/c/d"})
    assert (bad.status_code, bad.json()) == (400, {"error": 'destination "a/b/c/d" is invalid'})


async def test_delete_keeps_the_blobs_another_model_names(
    api: ApiFactory, redis: Redis, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    client = await api(models_dir=store.root)
    digest = await _two_models(client, tmp_path)
    base = store.get("base")
    assert base is not None
    base_system = base.manifest.layer(MediaType.SYSTEM)
    assert base_system is not None
    before = await _version(redis)

    deleted = await client.request("DELETE", "/api/delete", json={"model": "base"})
    assert deleted.status_code == 200 and deleted.content == b""
    assert store.get("base") is None
    assert store.has_blob(digest)  # derived's weights too
    assert not store.has_blob(base_system.digest)  # base's own
    assert not store.has_blob(base.manifest.config.digest)
    assert await _version(redis) == before + 1

    assert (await client.request("DELETE", "/api/delete", json={"model": "derived"})).is_success
    assert not store.has_blob(digest)  # nothing names it now
    assert store.models() == []
    gone = await client.request("DELETE", "/api/delete", json={"model": "derived"})
    assert (gone.status_code, gone.json()) == (404, {"error": "model 'derived' not found"})


async def test_delete_unloads_the_model_everywhere(
    api: ApiFactory, redis: Redis, tmp_path: Path
) -> None:
    client = await api(models_dir=tmp_path / "store")
    await _two_models(client, tmp_path)
    loaded = LoadedModel(
        name="derived:latest", size_bytes=1, size_vram=0, expires_at="2030-01-01T00:00:00Z"
    )
    await advertise(redis, [advert("derived:latest")], worker_id="w1", loaded=[loaded])
    await advertise(redis, [advert("derived:latest")], worker_id="w2")
    assert (await client.request("DELETE", "/api/delete", json={"model": "derived"})).is_success
    [(_, fields)] = await redis.xrange(keys.control_stream("w1"))
    assert ControlMessage.from_fields(fields).model == "derived:latest"
    assert await redis.xlen(keys.control_stream("w2")) == 0  # it had nothing loaded


async def test_models_outside_the_store_keep_aliases(
    api: ApiFactory, redis: Redis, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    client = await api(models_dir=store.root)
    await advertise(redis, [advert("gemma3:270m")])
    before = await _version(redis)
    copied = await client.post("/api/copy", json={"source": "gemma3:270m", "destination": "g"})
    assert copied.status_code == 200
    assert await redis.hget(keys.CATALOG_ALIASES, "g:latest") == b"gemma3:270m"  # type: ignore[misc]
    assert (await client.request("DELETE", "/api/delete", json={"model": "g"})).is_success
    assert (await client.request("DELETE", "/api/delete", json={"model": "gemma3:270m"})).is_success
    assert await redis.sismember(keys.CATALOG_DELETED, "gemma3:270m")  # type: ignore[misc]
    assert store.models() == [] and await _version(redis) == before


async def _tags(client: httpx.AsyncClient) -> set[str]:
    return {model["name"] for model in (await client.get("/api/tags")).json()["models"]}


async def test_a_created_model_is_served_until_deleted(
    api: ApiFactory, worker: WorkerFactory, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    client = await api(models_dir=store)
    # no cooldown: the model is loaded again, at once, after its copy replaces it
    await worker(models_dir=store, serve_default_model=False, scale_cooldown_s=0)
    await _two_models(client, tmp_path)
    # no waiting: create answers success once a worker serves the model, as Ollama does
    assert "derived:latest" in await _tags(client)
    chat = {"model": "derived", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    answer = await client.post("/api/chat", json=chat)
    assert answer.status_code == 200 and answer.json()["done"] is True

    assert (await client.request("DELETE", "/api/delete", json={"model": "derived"})).is_success
    # gone at once for this pod (the catalog of models seen would keep listing it)
    assert "derived:latest" not in await _tags(client)
    assert (await client.post("/api/chat", json=chat)).status_code == 404

    copied = await client.post("/api/copy", json={"source": "base", "destination": "derived"})
    assert copied.status_code == 200
    assert "derived:latest" in await _tags(client)  # served when copy answers
    assert (await client.post("/api/chat", json=chat)).status_code == 200
