"""``shared.registry``: names to registry URLs, the manifest, and a blob's download in ranged
parts that resume (against ``tests.registry`` in this event loop)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.registry.client import (
    INSECURE,
    MANIFEST_MISSING,
    PullFailed,
    Transient,
    fetch_manifest,
    remote,
)
from shared.registry.download import Counter, cut, download, load_plan, sidecar_path
from shared.store import Manifest, Store
from tests.registry import Model, Registry, host_of, serving, tiny_gguf

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
