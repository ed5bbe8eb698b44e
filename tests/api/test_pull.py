"""POST /api/pull end to end: an in-process API, real ``herd worker`` processes (FakeEngine,
``HERD_MODELS_DIR`` a fresh store) running the pulls, and ``tests.registry`` as the
registry. Ollama's lines in Ollama's order; the store's blobs verified; one download per
blob however many pulls want it; a pull outlives the API process that started it."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from arq.constants import health_check_key_suffix, in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from api.auth import Need, need
from api.routes import pull as pull_route
from api.routes.pull import LOST, follow, start_or_follow
from cli.ports import free_port
from shared import keys, names
from shared.errors import EngineFailure
from shared.registry.client import INSECURE, MANIFEST_MISSING
from shared.registry.progress import Reporter, decode
from shared.settings import Settings
from shared.store import Store
from tests.conftest import ApiFactory, ProcessFactory, process_log, worker_env
from tests.registry import Model, Registry, host_of, lines_of, serving, tiny_gguf
from worker import pulls

MIB = 1 << 20
PULLERS = keys.PULL_QUEUE + health_check_key_suffix


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = Registry()
    reg.add_model("library/tiny:latest", tiny_gguf(tmp_path / "t.gguf", weights=MIB))
    async with serving(reg):
        yield reg


def model_of(registry: Registry, name: str = "library/tiny:latest") -> Model:
    from shared.store import Manifest

    manifest = Manifest.model_validate_json(registry.manifests[name])
    return Model(registry.manifests[name], [*manifest.layers, manifest.config])


async def start_puller(
    herd_process: ProcessFactory, redis: Redis, redis_url: str, store: Path, **settings: Any
) -> subprocess.Popen[bytes]:
    """A FakeEngine worker that runs pulls into ``store``, once its arq worker polls."""
    worker_id = f"puller-{free_port()}"
    child = herd_process("worker", **worker_env(redis_url, worker_id, models_dir=store, **settings))
    deadline = time.monotonic() + 60
    while not await redis.exists(PULLERS):
        assert child.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, "the worker never started its pulls"
        await asyncio.sleep(0.05)
    return child


async def pull(client: httpx.AsyncClient, **body: Any) -> tuple[int, list[dict[str, Any]]]:
    response = await client.post("/api/pull", json=body, timeout=60)
    return response.status_code, lines_of(response.content)


async def follow_until_downloading(
    client: httpx.AsyncClient, name: str, lines: list[dict[str, Any]]
) -> asyncio.Task[None]:
    """Follow ``name``'s pull in a task that appends its lines to ``lines``; returns once
    a layer's download has begun."""

    async def follow() -> None:
        body = {"model": name, "insecure": True}
        async with client.stream("POST", "/api/pull", json=body, timeout=60) as response:
            async for line in response.aiter_lines():
                lines.append(lines_of(line.encode())[0])

    following = asyncio.create_task(follow())
    while not any(line.get("completed") for line in lines):
        assert not following.done(), lines
        await asyncio.sleep(0.05)
    return following


def check_order(lines: list[dict[str, Any]], model: Model) -> None:
    """Ollama's progress: manifest, each layer (config last) counting up to its size, then
    the verification, the manifest, success."""
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    for line in lines[1:-3]:
        assert list(line) == ["status", "digest", "total", "completed"]
        assert line["status"] == f"pulling {line['digest'][7:19]}"
    seen = [line["digest"] for line in lines[1:-3]]
    order = [digest for i, digest in enumerate(seen) if i == 0 or seen[i - 1] != digest]
    assert order == [layer.digest for layer in model.layers]  # layer by layer, in order
    for layer in model.layers:
        done = [line["completed"] for line in lines if line.get("digest") == layer.digest]
        assert done == sorted(done) and done[-1] == layer.size
        assert {line["total"] for line in lines if line.get("digest") == layer.digest} == {
            layer.size
        }


def check_store(store: Path, name: str, model: Model) -> None:
    found = Store(store).get(name)
    assert found is not None
    assert [layer.digest for layer in found.manifest.blobs()] == [
        model.layers[-1].digest,
        *(layer.digest for layer in model.layers[:-1]),
    ]
    for layer in model.layers:
        data = Store(store).blob_path(layer.digest).read_bytes()
        assert f"sha256:{hashlib.sha256(data).hexdigest()}" == layer.digest
    leftovers = [p.name for p in (store / "blobs").iterdir() if "partial" in p.name]
    assert leftovers == []


async def test_pull_streams_ollamas_lines_and_fills_the_store(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    await start_puller(herd_process, redis, redis_url, store)
    client = await api()
    name = f"{host_of(registry)}/library/tiny"
    model = model_of(registry)
    async with client.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = lines_of(await r.aread())
    check_order(lines, model)
    check_store(store, name, model)
    # the GGUF came in 4 ranged parts (HERD_PULL_PARALLEL's default) after a 1-byte probe
    assert len(registry.range_starts[model.gguf.digest]) == 5
    assert registry.served[model.gguf.digest] == model.gguf.size + 1
    assert int(await redis.get(keys.STORE_VERSION) or 0) >= 1
    # the same pull again: every layer is there, each reported once, whole
    status, again = await pull(client, model=name, insecure=True, stream=True)
    assert status == 200
    check_order(again, model)
    assert len(again) == 3 + len(model.layers) + 1
    assert registry.served[model.gguf.digest] == model.gguf.size + 1  # nothing fetched


async def test_stream_false_and_errors(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    client = await api()
    host = host_of(registry)
    # no worker can pull yet: 503 at once, not a pull that waits forever
    response = await client.post("/api/pull", json={"model": f"{host}/library/tiny"})
    assert response.status_code == 503
    await start_puller(herd_process, redis, redis_url, tmp_path / "store")
    for bad in ("", "a/b/c/d", "bad name"):
        response = await client.post("/api/pull", json={"model": bad})
        assert (response.status_code, response.json()) == (400, {"error": "invalid model name"})
    response = await client.post(
        "/api/pull", json={"name": f"{host}/library/tiny", "insecure": True, "stream": False}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "success"}
    # an unknown model: mid-stream error (200), or 500 without streaming
    status, lines = await pull(client, model=f"{host}/library/nope", insecure=True)
    assert status == 200
    assert lines == [{"status": "pulling manifest"}, {"error": MANIFEST_MISSING}]
    response = await client.post(
        "/api/pull", json={"model": f"{host}/library/nope", "insecure": True, "stream": False}
    )
    assert (response.status_code, response.json()) == (500, {"error": MANIFEST_MISSING})
    # an http registry needs insecure
    status, lines = await pull(client, model=f"http://{host}/library/tiny")
    assert lines == [{"status": "pulling manifest"}, {"error": INSECURE}]


async def test_a_dropped_download_resumes_from_its_partial(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    worker = await start_puller(herd_process, redis, redis_url, store)
    client = await api()
    model = model_of(registry)
    registry.fail_once[model.gguf.digest] = 600 * 1024  # one part's answer drops halfway
    name = f"{host_of(registry)}/library/tiny"
    status, lines = await pull(client, model=name, insecure=True)
    assert status == 200
    assert lines[-1] == {"status": "success"}
    check_order(lines, model)
    check_store(store, name, model)
    assert any(entry.get("event") == "pull_retry" for entry in process_log(worker))
    # the second try asked only for the rest of the broken part: nothing came twice
    starts = registry.range_starts[model.gguf.digest]
    assert len(starts) == 1 + 4 + 1 + 1  # probe, 4 parts; probe, the rest of one part
    assert registry.served[model.gguf.digest] == model.gguf.size + 2


async def test_concurrent_pulls_share_one_download(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    # two workers: the pulls may land on either; the blob lock is in Redis
    await start_puller(herd_process, redis, redis_url, store)
    await start_puller(herd_process, redis, redis_url, store)
    gguf = registry.blobs[model_of(registry).gguf.digest]
    registry.add_model("library/other:latest", gguf, template="{{ .System }}")  # same GGUF
    registry.delay_s = 0.03  # about 0.5 s per part: the pulls overlap
    client = await api()
    host = host_of(registry)
    results = await asyncio.gather(
        pull(client, model=f"{host}/library/tiny", insecure=True),
        pull(client, model=f"{host}/library/tiny", insecure=True),
        pull(client, model=f"{host}/library/other", insecure=True),
    )
    for _, lines in results:
        assert lines[-1] == {"status": "success"}
    check_order(results[0][1], model_of(registry))
    check_order(results[2][1], model_of(registry, "library/other:latest"))
    # one pull of tiny (the second request followed it), one download of the shared GGUF
    assert registry.manifest_requests["library/tiny:latest"] == 1
    digest = model_of(registry).gguf.digest
    assert registry.served[digest] <= len(gguf) + 2  # + a probe byte per download started
    assert len([s for s in registry.range_starts[digest] if s != 0]) == 3  # parts 2-4, once
    check_store(store, f"{host}/library/other", model_of(registry, "library/other:latest"))


async def test_a_pull_outlives_the_api_that_started_it(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    await start_puller(herd_process, redis, redis_url, store)
    port = free_port()
    first = herd_process("api", HERD_REDIS_URL=redis_url, HERD_HOST=f"127.0.0.1:{port}")
    registry.delay_s = 0.1  # about 2 s for the GGUF
    name = f"{host_of(registry)}/library/tiny"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        deadline = time.monotonic() + 60
        while True:
            try:
                await client.get("/api/version")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        seen: list[dict[str, Any]] = []
        body = {"model": name, "insecure": True}
        async with client.stream("POST", "/api/pull", json=body) as response:
            async for line in response.aiter_lines():
                seen.append(lines_of(line.encode())[0])
                if len(seen) == 3:
                    break
        first.kill()  # the API goes, mid-pull
        first.wait()
    assert seen[0] == {"status": "pulling manifest"}
    second = await api()
    status, lines = await pull(second, model=name, insecure=True)
    assert status == 200
    # the reconnecting client replays the same pull from its start and sees it finish
    assert lines[:3] == seen
    check_order(lines, model_of(registry))
    assert registry.manifest_requests["library/tiny:latest"] == 1
    check_store(store, name, model_of(registry))


async def test_the_ollama_client_pulls(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    await start_puller(herd_process, redis, redis_url, tmp_path / "store")
    client = await api()
    name = f"{host_of(registry)}/library/tiny"
    async with ollama.AsyncClient(host=str(client.base_url)) as ollama_client:
        parts = [part async for part in await ollama_client.pull(name, insecure=True, stream=True)]
        assert parts[0].status == "pulling manifest" and parts[-1].status == "success"
        layer = model_of(registry).gguf
        last = [p for p in parts if p.digest == layer.digest][-1]
        assert (last.total, last.completed) == (layer.size, layer.size)
        done = await ollama_client.pull(name, insecure=True)  # stream=False
        assert done.status == "success"
        with pytest.raises(ollama.ResponseError, match="file does not exist"):
            await ollama_client.pull(f"{host_of(registry)}/library/nope", insecure=True)


async def test_a_stopped_worker_hands_its_pull_to_another(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    first = await start_puller(herd_process, redis, redis_url, store)
    client = await api()
    # about 5 s for the GGUF: longer than the first worker's own shutdown (it pulls on
    # while it drains, then hands the pull back)
    registry.delay_s = 0.3
    model = model_of(registry)
    name = f"{host_of(registry)}/library/tiny"
    lines: list[dict[str, Any]] = []
    following = await follow_until_downloading(client, name, lines)
    first.terminate()  # SIGTERM mid-download: arq gets the pull back
    await asyncio.to_thread(first.wait, 30)
    second = await start_puller(herd_process, redis, redis_url, store)
    await asyncio.wait_for(following, 60)
    # one stream, to the end, as if nothing happened; the second worker went on from the
    # partial file (what reached the first worker's file is not fetched again)
    check_order(lines, model)
    check_store(store, name, model)
    done = [e for e in process_log(second) if e.get("event") == "pull_blob_done"]
    resumed = next(e for e in done if e["digest"] == model.gguf.digest)
    assert 0 < resumed["fetched"] < model.gguf.size
    assert registry.served[model.gguf.digest] < 1.5 * model.gguf.size


def test_pull_needs_an_admin_key() -> None:
    assert need("/api/pull") is Need.ADMIN


async def test_a_follower_of_a_lost_pull_gets_an_error(redis: Redis) -> None:
    """A pull whose job vanished without its last line (its tries ran out in a way that
    wrote none) ends the follower's stream with an error, not a wait forever."""
    model = "127.0.0.1:1/library/lost:latest"
    run = await start_or_follow(redis, model, model, insecure=True)
    # a second request follows the same run
    assert await start_or_follow(redis, model, model, insecure=True) == run
    await Reporter(redis, model, run).send({"status": "pulling manifest"})
    await redis.delete(job_key_prefix + keys.pull_job_id(model))  # lost: no worker ran it
    await redis.zrem(keys.PULL_QUEUE, keys.pull_job_id(model))
    lines = follow(redis, model, run)
    assert await anext(lines) == {"status": "pulling manifest"}
    with pytest.raises(EngineFailure, match=LOST):
        await anext(lines)


async def test_a_killed_workers_pull_is_taken_over(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    """A worker killed outright (SIGKILL, the OOM killer) cannot hand its pull back: its
    claim on the job lapses within HERD_PULL_LEASE_S (not arq's hours), another worker
    takes the pull over, and the follower's one stream goes on to ``success``."""
    store = tmp_path / "store"
    first = await start_puller(herd_process, redis, redis_url, store, pull_lease_s=2)
    client = await api()
    registry.delay_s = 0.3  # about 5 s for the GGUF
    model = model_of(registry)
    name = f"{host_of(registry)}/library/tiny"
    lines: list[dict[str, Any]] = []
    following = await follow_until_downloading(client, name, lines)
    in_progress = in_progress_key_prefix + keys.pull_job_id(names.normalize(name))
    assert 0 < await redis.pttl(in_progress) <= 2000  # the lease, not arq's 6 h
    first.kill()
    await asyncio.to_thread(first.wait, 30)
    await start_puller(herd_process, redis, redis_url, store, pull_lease_s=2)
    await asyncio.wait_for(following, 60)
    statuses = [line["status"] for line in lines]
    assert statuses.count("pulling manifest") == 1  # the next try goes on with the stream
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    check_store(store, name, model)


async def test_a_re_pull_removes_the_unused_layers(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    registry: Registry,
    tmp_path: Path,
) -> None:
    """A new version of a model replaces the old one's blobs no other model names, as
    Ollama's ``removing unused layers`` does."""
    store = tmp_path / "store"
    await start_puller(herd_process, redis, redis_url, store)
    client = await api()
    name = f"{host_of(registry)}/library/tiny"
    old = model_of(registry)
    status, lines = await pull(client, model=name, insecure=True)
    assert status == 200 and "removing unused layers" not in [x["status"] for x in lines]
    registry.add_model("library/tiny:latest", tiny_gguf(tmp_path / "v2.gguf", weights=MIB, seed=1))
    new = model_of(registry)
    status, lines = await pull(client, model=name, insecure=True)
    assert status == 200
    statuses = [line["status"] for line in lines]
    assert statuses[-4:] == [
        "verifying sha256 digest",
        "writing manifest",
        "removing unused layers",
        "success",
    ]
    check_store(store, name, new)
    assert not Store(store).has_blob(old.gguf.digest)  # the old weights went
    assert Store(store).has_blob(old.layers[1].digest)  # the template is the new one's too


async def test_a_huge_metadata_layer_fails_the_pull_before_any_download(
    redis: Redis, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pulls, "MAX_METADATA_BYTES", 10)  # the template is 14 bytes
    name = f"{host_of(registry)}/library/tiny"
    async with httpx.AsyncClient(follow_redirects=True) as http:
        deps = pulls.Deps(Settings(), Store(tmp_path / "store"), redis, http)
        ctx = {"pulls": deps, "job_try": 1, "job_id": "test"}
        assert await pulls.pull_model(ctx, name, True, "run") == "failed"
    last = await redis.xrevrange(keys.pull_progress(names.normalize(name)), count=1)
    assert "larger than 10 bytes" in decode(last[0][1])[1]["error"]
    assert not registry.served  # nothing was downloaded


async def test_a_follower_of_a_pull_no_worker_runs_gives_up(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued with no worker to take it (every puller gone), the pull may never run: the
    follower ends with an error after STALL_S without a line, not a wait forever."""
    monkeypatch.setattr(pull_route, "STALL_S", 1.0)
    monkeypatch.setattr(pull_route, "ALIVE_CHECK_S", 0.2)
    model = "127.0.0.1:1/library/stalled:latest"
    run = await start_or_follow(redis, model, model, insecure=True)
    await Reporter(redis, model, run).send({"status": "pulling manifest"})
    lines = follow(redis, model, run)
    assert await anext(lines) == {"status": "pulling manifest"}
    with pytest.raises(EngineFailure, match=pull_route.STALLED):
        await asyncio.wait_for(anext(lines), 10)


async def test_a_follower_follows_a_queued_pull(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued again (a retry's delay, a killed worker's pull waiting to be taken over), a
    pull is not gone: its follower waits for its lines."""
    monkeypatch.setattr(pull_route, "ALIVE_CHECK_S", 0.1)
    model = "127.0.0.1:1/library/queued:latest"
    run = await start_or_follow(redis, model, model, insecure=True)
    lines = follow(redis, model, run)
    first = asyncio.ensure_future(anext(lines))
    await asyncio.sleep(3)  # several checks of the job
    assert not first.done()
    await Reporter(redis, model, run).send({"status": "success"})
    assert await asyncio.wait_for(first, 5) == {"status": "success"}
