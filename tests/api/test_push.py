"""POST /api/push over real HTTP: a model created in a store (an in-process API with
``HERD_MODELS_DIR``) pushed to ``tests.registry`` and pulled back by a ``herd worker`` into a
second, empty store with the same manifest digest; blobs the registry has are skipped; the
refusals and the registry's 401; the ``ollama`` Python client's ``push``."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from redis.asyncio import Redis

from api.auth import Need, need
from shared.registry.client import INSECURE, remote
from shared.registry.upload import UNAUTHORIZED, PushFailed, has_blob, push_manifest
from shared.store import Store
from tests.api.test_create import tiny_gguf, upload
from tests.api.test_pull import start_puller
from tests.conftest import ApiFactory, ProcessFactory
from tests.registry import Registry, host_of, lines_of, serving
from tests.registry import tiny_gguf as registry_gguf


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    async with serving(Registry()) as reg:
        yield reg


async def created(client: httpx.AsyncClient, tmp_path: Path, name: str) -> None:
    """``name`` in the API's store: a GGUF uploaded, a model with a system prompt on it."""
    digest = await upload(client, tiny_gguf(tmp_path / "tiny.gguf").read_bytes())
    body = {"model": name, "files": {"tiny.gguf": digest}, "system": "Be brief.", "stream": False}
    response = await client.post("/api/create", json=body)
    assert response.status_code == 200, response.text


async def push(client: httpx.AsyncClient, **body: Any) -> tuple[int, list[dict[str, Any]]]:
    response = await client.post("/api/push", json=body, timeout=60)
    return response.status_code, lines_of(response.content)


def check_lines(lines: list[dict[str, Any]], store: Store, name: str) -> None:
    """Ollama's order: the manifest, each layer (config last) up to its size, then success."""
    stored = store.get(name)
    assert stored is not None
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "retrieving manifest"
    assert statuses[-2:] == ["pushing manifest", "success"]
    for line in lines[1:-2]:
        assert list(line) == ["status", "digest", "total", "completed"]
        assert line["status"] == f"pushing {line['digest'][7:19]}"
    seen = [line["digest"] for line in lines[1:-2]]
    order = [digest for i, digest in enumerate(seen) if i == 0 or seen[i - 1] != digest]
    manifest = stored.manifest
    assert order == [layer.digest for layer in [*manifest.layers, manifest.config]]
    for layer in manifest.blobs():
        done = [line["completed"] for line in lines if line.get("digest") == layer.digest]
        assert done == sorted(done) and done[-1] == layer.size


async def test_push_then_pull_back_into_an_empty_store(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store")
    client = await api(models_dir=store.root)
    name = f"{host_of(registry)}/library/mine:v1"
    await created(client, tmp_path, name)
    stored = store.get(name)
    assert stored is not None
    status, lines = await push(client, model=name, insecure=True)
    assert status == 200
    check_lines(lines, store, name)
    # every blob uploaded once, whole, streamed with its length; the manifest's own bytes
    for layer in stored.manifest.blobs():
        assert registry.uploaded[layer.digest] == layer.size
        assert registry.upload_lengths[layer.digest] == str(layer.size)
    assert registry.manifests["library/mine:v1"] == stored.path.read_bytes()
    assert registry.manifest_types["library/mine:v1"] == (
        "application/vnd.docker.distribution.manifest.v2+json"
    )
    # pulled back by a worker into a second, empty store: the same model, the same digest
    second = tmp_path / "second"
    await start_puller(herd_process, redis, redis_url, second)
    response = await client.post("/api/pull", json={"model": name, "insecure": True}, timeout=60)
    assert lines_of(response.content)[-1] == {"status": "success"}
    back = Store(second).get(name)
    assert back is not None
    assert back.digest == stored.digest
    for layer in stored.manifest.blobs():
        data = Store(second).blob_path(layer.digest).read_bytes()
        assert f"sha256:{hashlib.sha256(data).hexdigest()}" == layer.digest


async def test_blobs_the_registry_has_are_skipped(
    api: ApiFactory, registry: Registry, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    client = await api(models_dir=store.root)
    name = f"{host_of(registry)}/library/mine"
    await created(client, tmp_path, name)
    stored = store.get(name)
    assert stored is not None
    gguf = stored.manifest.layers[0]
    registry.blobs[gguf.digest] = store.blob_path(gguf.digest).read_bytes()  # there already
    status, lines = await push(client, model=name, insecure=True, stream=True)
    assert status == 200
    check_lines(lines, store, name)
    assert [line for line in lines if line.get("digest") == gguf.digest] == [
        {
            "status": f"pushing {gguf.digest[7:19]}",
            "digest": gguf.digest,
            "total": gguf.size,
            "completed": gguf.size,
        }
    ]  # reported once, whole
    assert gguf.digest not in registry.uploaded
    assert len(registry.uploaded) == len(stored.manifest.blobs()) - 1
    # the same push again: nothing is uploaded, each blob reported once; the manifest again
    before = dict(registry.uploaded)
    status, again = await push(client, model=name, insecure=True)
    assert status == 200
    check_lines(again, store, name)
    assert len(again) == 1 + len(stored.manifest.blobs()) + 2
    assert registry.uploaded == before
    assert registry.manifests["library/mine:latest"] == stored.path.read_bytes()


async def test_a_large_blob_reports_progress_while_it_uploads(
    api: ApiFactory, registry: Registry, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    client = await api(models_dir=store.root)
    # 16 MiB: more than the sockets between here and the registry buffer
    gguf = registry_gguf(tmp_path / "big.gguf", weights=4 << 20)
    digest = await upload(client, gguf)
    name = f"{host_of(registry)}/library/big"
    body = {"model": name, "files": {"big.gguf": digest}, "stream": False}
    assert (await client.post("/api/create", json=body)).status_code == 200
    registry.delay_s = 0.005  # per chunk received: the upload takes a few ticks
    status, lines = await push(client, model=name, insecure=True)
    assert status == 200
    check_lines(lines, store, name)
    done = [line["completed"] for line in lines if line.get("digest") == digest]
    assert done[0] == 0 and done[-1] == len(gguf)
    assert any(0 < completed < len(gguf) for completed in done), done
    assert registry.blobs[digest] == gguf


async def test_refusals_and_errors(api: ApiFactory, registry: Registry, tmp_path: Path) -> None:
    host = host_of(registry)
    # no store: 501, as /api/create
    bare = await api()
    response = await bare.post("/api/push", json={"model": f"{host}/library/mine"})
    assert response.status_code == 501
    store = Store(tmp_path / "store")
    client = await api(models_dir=store.root)
    name = f"{host}/library/mine"
    await created(client, tmp_path, name)
    for body, error in [
        ({}, "model is required"),
        ({"model": ""}, "model is required"),
        ({"model": "a/b/c/d"}, "invalid model name"),
        ({"model": "bad name"}, "invalid model name"),
        ({"model": name, "stream": "yes"}, None),
    ]:
        response = await client.post("/api/push", json=body)
        assert response.status_code == 400, body
        if error is not None:
            assert response.json() == {"error": error}
    # not in the store: Ollama's status line, then the error; 404 without streaming
    missing = f"{host}/library/nope"
    status, lines = await push(client, model=missing, insecure=True)
    assert status == 200
    assert lines == [
        {"status": "retrieving manifest"},
        {"status": "couldn't retrieve manifest"},
        {"error": f'model "{missing}" not found'},
    ]
    response = await client.post("/api/push", json={"model": missing, "stream": False})
    assert (response.status_code, response.json()) == (
        404,
        {"error": f'model "{missing}" not found'},
    )
    # http needs insecure
    status, lines = await push(client, model=f"http://{name}")
    assert lines == [{"status": "retrieving manifest"}, {"error": INSECURE}]
    # a registry that wants a login: 401 is Ollama's `unauthorized`, nothing uploaded
    registry.token = "secret"
    status, lines = await push(client, model=name, insecure=True)
    assert status == 200
    assert lines[0] == {"status": "retrieving manifest"}
    assert lines[-1] == {"error": UNAUTHORIZED}
    assert "unauthorized" in UNAUTHORIZED
    assert registry.uploaded == {} and registry.manifests == {}
    response = await client.post(
        "/api/push", json={"model": name, "insecure": True, "stream": False}
    )
    assert (response.status_code, response.json()) == (500, {"error": UNAUTHORIZED})
    # a registry out of reach: an error line, not a hang
    away = "127.0.0.1:1/library/mine"
    response = await client.post("/api/copy", json={"source": name, "destination": away})
    assert response.status_code == 200
    status, lines = await push(client, model=away, insecure=True)
    assert status == 200
    assert lines[-1]["error"].startswith("check blob: ConnectError")


async def test_the_ollama_client_pushes(
    api: ApiFactory, registry: Registry, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    client = await api(models_dir=store.root)
    name = f"{host_of(registry)}/library/mine"
    await created(client, tmp_path, name)
    async with ollama.AsyncClient(host=str(client.base_url)) as ollama_client:
        parts = [part async for part in await ollama_client.push(name, insecure=True, stream=True)]
        assert parts[0].status == "retrieving manifest" and parts[-1].status == "success"
        stored = store.get(name)
        assert stored is not None
        layer = stored.manifest.layers[0]
        last = [p for p in parts if p.digest == layer.digest][-1]
        assert (last.total, last.completed) == (layer.size, layer.size)
        done = await ollama_client.push(name, insecure=True)  # stream=False
        assert done.status == "success"
        with pytest.raises(ollama.ResponseError, match="not found"):
            await ollama_client.push(f"{host_of(registry)}/library/nope", insecure=True)
        registry.token = "secret"
        with pytest.raises(ollama.ResponseError, match="unauthorized"):
            await ollama_client.push(name, insecure=True)
    assert registry.manifests["library/mine:latest"] == stored.path.read_bytes()


def test_push_needs_an_admin_key() -> None:
    assert need("/api/push") is Need.ADMIN


async def test_a_registry_error_body_is_read_only_in_part() -> None:
    """A hostile registry's endless error body cannot fill the API's memory."""
    served = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal served
        while True:
            served += 65536
            yield b"x" * 65536

    transport = httpx.MockTransport(lambda request: httpx.Response(400, content=endless()))
    where = remote("reg.example/ns/m", insecure=False)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(PushFailed, match=r"registry answered 400$"):
            await asyncio.wait_for(has_blob(client, where, "sha256:" + "ab" * 32), 10)
        with pytest.raises(PushFailed, match=r"registry answered 400$"):
            await asyncio.wait_for(push_manifest(client, where, b"{}"), 10)
    assert served < 1 << 20
