"""``shared.registry``: names to registry URLs, the manifest, and a blob's download in ranged
parts that resume (against ``tests.registry`` in this event loop)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from shared.registry.client import (
    INSECURE,
    INVALID_MANIFEST,
    MANIFEST_MISSING,
    PullFailed,
    Transient,
    fetch_manifest,
    remote,
)
from shared.registry.download import Counter, cut, download, load_plan, sidecar_path
from shared.settings import Settings
from shared.store import Layer, Manifest, MediaType, Store
from tests.registry import Model, Registry, host_of, serving, tiny_gguf
from worker import pulls

MIB = 1 << 20


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = Registry()
    reg.add_model("library/tiny:latest", tiny_gguf(tmp_path / "t.gguf", weights=2 * MIB))
    async with serving(reg):
        yield reg


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=True, timeout=10) as client:
        yield client


def the_model(registry: Registry) -> Model:
    raw = registry.manifests["library/tiny:latest"]
    manifest = Manifest.model_validate_json(raw)
    return Model(raw, [*manifest.layers, manifest.config])


def test_names_to_registry_urls() -> None:
    where = remote("gemma3", insecure=False)
    assert where.manifest_url() == "https://registry.ollama.ai/v2/library/gemma3/manifests/latest"
    assert (
        where.blob_url("sha256:ab")
        == "https://registry.ollama.ai/v2/library/gemma3/blobs/sha256:ab"
    )
    hf = remote("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", insecure=False)
    assert hf.manifest_url() == (
        "https://hf.co/v2/bartowski/llama-3.2-1b-instruct-gguf/manifests/q4_k_m"
    )
    # insecure: http, also for a name without a scheme
    assert remote("localhost:5000/ns/m:t", insecure=True).base == "http://localhost:5000"
    assert remote("localhost:5000/ns/m:t", insecure=False).base == "https://localhost:5000"
    with pytest.raises(PullFailed, match=INSECURE):
        remote("http://localhost:5000/ns/m:t", insecure=False)
    assert remote("http://localhost:5000/ns/m:t", insecure=True).base == "http://localhost:5000"


def test_parts_cover_the_blob() -> None:
    plan = cut(10 * MIB + 3, 4)
    assert plan.parts[0].start == 0 and plan.parts[-1].end == 10 * MIB + 3
    assert all(a.end == b.start for a, b in zip(plan.parts, plan.parts[1:], strict=False))
    assert len(plan.parts) == 4
    assert len(cut(100, 4).parts) == 1  # small blobs: one request
    assert len(cut(0, 4).parts) == 1


async def test_manifest_and_unknown_model(registry: Registry, http: httpx.AsyncClient) -> None:
    where = remote(f"{host_of(registry)}/library/tiny", insecure=True)
    manifest = await fetch_manifest(http, where)
    assert manifest.dump() == registry.manifests["library/tiny:latest"]
    with pytest.raises(PullFailed, match=MANIFEST_MISSING):
        await fetch_manifest(http, remote(f"{host_of(registry)}/library/nope", insecure=True))


async def _fetch(
    registry: Registry, http: httpx.AsyncClient, store: Store, parallel: int = 4
) -> Counter:
    layer = the_model(registry).layers[0]
    url = f"{registry.url}/v2/library/tiny/blobs/{layer.digest}"
    counter = Counter()
    await download(http, url, layer.digest, layer.size, store, parallel=parallel, counter=counter)
    return counter


async def test_download_in_parallel_parts(
    registry: Registry, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    layer = the_model(registry).layers[0]
    counter = await _fetch(registry, http, store)
    data = store.blob_path(layer.digest).read_bytes()
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == layer.digest
    assert counter.completed == counter.fetched == layer.size
    # the probe (byte 0), then 4 parts, each from its own offset (after the redirect)
    assert sorted(registry.range_starts[layer.digest]) == [0] + [
        p.start for p in cut(layer.size, 4).parts
    ]
    assert not store.partial_path(layer.digest).exists()
    assert not sidecar_path(store.partial_path(layer.digest)).exists()


async def test_a_server_without_ranges_gets_one_stream(
    registry: Registry, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    registry.ranges = False
    store = Store(tmp_path / "store")
    layer = the_model(registry).layers[0]
    counter = await _fetch(registry, http, store)
    assert store.has_blob(layer.digest) and counter.fetched == layer.size
    # the probe's answer was the whole blob, read as the one stream: nothing sent twice
    assert registry.served[layer.digest] == layer.size


async def test_an_interrupted_download_resumes(
    registry: Registry, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    layer = the_model(registry).layers[0]
    # drop the first part's stream halfway (the probe asks 1 byte and is never cut)
    registry.fail_once[layer.digest] = 3 * MIB // 2
    with pytest.raises(Transient):
        await _fetch(registry, http, store, parallel=2)
    plan = load_plan(sidecar_path(store.partial_path(layer.digest)), layer.size)
    assert plan is not None and 0 < plan.completed < layer.size
    kept = plan.completed
    first = registry.served[layer.digest]
    counter = await _fetch(registry, http, store, parallel=2)
    assert store.has_blob(layer.digest)
    # the second try fetched only what the first had not kept
    assert counter.fetched == layer.size - kept
    assert registry.served[layer.digest] - first == counter.fetched + 1  # + the probe's byte


async def test_a_corrupt_blob_never_becomes_visible(
    registry: Registry, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    layer = the_model(registry).layers[0]
    registry.blobs[layer.digest] = b"x" + registry.blobs[layer.digest][1:]
    with pytest.raises(PullFailed, match="digest mismatch"):
        await _fetch(registry, http, store)
    assert not store.has_blob(layer.digest)
    assert not store.partial_path(layer.digest).exists()


def _mock(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=True)


async def _endless() -> AsyncIterator[bytes]:
    while True:
        yield b"x" * 65536


async def test_a_huge_manifest_is_refused_unread() -> None:
    where = remote("reg.example/ns/m", insecure=False)
    sent = httpx.Response(200, headers={"content-length": str(1 << 40)}, content=b"{}")
    async with _mock(lambda request: sent) as client:
        with pytest.raises(PullFailed, match="larger than"):
            await fetch_manifest(client, where)
    # no length given: read no further than the limit (an endless body would never end)
    async with _mock(lambda request: httpx.Response(200, content=_endless())) as client:
        with pytest.raises(PullFailed, match="larger than"):
            await asyncio.wait_for(fetch_manifest(client, where), 10)


def _manifest(digest: str, size: int = 1) -> bytes:
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": size}
    return orjson.dumps({"schemaVersion": 2, "config": layer, "layers": [layer]})


@pytest.mark.parametrize(
    "raw",
    [
        _manifest("sha256:../../etc"),
        _manifest("md5:abc"),
        _manifest("sha256:" + "ab" * 32, size=-5),
    ],
)
async def test_an_invalid_manifest_fails_the_pull_cleanly(raw: bytes) -> None:
    where = remote("reg.example/ns/m", insecure=False)
    async with _mock(lambda request: httpx.Response(200, content=raw)) as client:
        with pytest.raises(PullFailed, match=INVALID_MANIFEST):
            await fetch_manifest(client, where)


async def test_a_redirect_loop_fails_and_the_network_retries() -> None:
    where = remote("reg.example/ns/m", insecure=False)

    def loop(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": str(request.url)})

    async with _mock(loop) as client:
        with pytest.raises(PullFailed, match="pull model manifest"):
            await fetch_manifest(client, where)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with _mock(refuse) as client:
        with pytest.raises(Transient):
            await fetch_manifest(client, where)


async def test_https_redirected_to_http_is_refused() -> None:
    raw = _manifest("sha256:" + "ab" * 32)

    def downgrade(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            return httpx.Response(
                307, headers={"location": f"http://cdn.example{request.url.path}"}
            )
        return httpx.Response(200, content=raw, headers={"content-range": "bytes 0-0/1"})

    async with _mock(downgrade) as client:
        with pytest.raises(PullFailed, match="redirected https to http"):
            await fetch_manifest(client, remote("reg.example/ns/m", insecure=False))
        # insecure asks for http from the start: nothing to refuse
        manifest = await fetch_manifest(client, remote("reg.example/ns/m", insecure=True))
        assert manifest.layers[0].size == 1
        with pytest.raises(PullFailed, match="redirected https to http"):
            await download(
                client,
                "https://reg.example/v2/ns/m/blobs/sha256:" + "ab" * 32,
                "sha256:" + "ab" * 32,
                10,
                Store(Path("/nonexistent-store-never-written")),
                parallel=1,
                counter=Counter(),
            )


async def test_a_cancelled_download_never_writes_after_its_file_closes(
    registry: Registry, http: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part's write runs in a thread that a cancel cannot stop: the fd must stay open
    until it ends (a closed fd's number may already be another file's)."""
    closed: set[int] = set()
    late: list[int] = []
    writing = threading.Event()
    real_pwrite, real_close = os.pwrite, os.close

    def slow_pwrite(fd: int, data: Any, offset: int) -> int:
        if threading.current_thread() is not threading.main_thread():  # a part's thread
            writing.set()
            time.sleep(0.3)
        if fd in closed:
            late.append(fd)
        return real_pwrite(fd, data, offset)

    def close(fd: int) -> None:
        closed.add(fd)
        real_close(fd)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    monkeypatch.setattr(os, "close", close)
    store = Store(tmp_path / "store")
    task = asyncio.create_task(_fetch(registry, http, store, parallel=2))
    await asyncio.to_thread(writing.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)  # any write still running has ended by now
    assert late == []


async def test_a_long_sha256_check_still_sends_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a big blob is hashed no byte arrives: its last line is sent again now and then,
    so a follower sees the pull alive (and does not give it up as stalled)."""

    async def hashing(*args: Any, counter: Counter, **kwargs: Any) -> None:
        counter.completed = 5
        await asyncio.sleep(1.0)  # the sha256 of a large file

    monkeypatch.setattr(pulls, "download", hashing)
    monkeypatch.setattr(pulls, "KEEPALIVE_S", 0.2)
    sent: list[int] = []

    async def report(done: int) -> None:
        sent.append(done)

    deps = pulls.Deps(Settings(), Store(tmp_path), None, None)  # type: ignore[arg-type]
    layer = Layer(media_type=MediaType.MODEL, digest="sha256:" + "ab" * 32, size=5)
    await pulls._download(deps, remote("reg.example/ns/m", insecure=False), layer, report)
    assert len(sent) >= 3 and set(sent) == {5}
