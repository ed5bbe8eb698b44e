"""Test harness: a real redis-server for the session, and factories for API servers and
workers (in-process with FakeEngine, or as real ``herd`` processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from redis.asyncio import Redis

from api.app import create_app
from cli.embedded import EmbeddedRedis
from cli.ports import free_port
from shared import keys
from shared.messages import (
    DoneEvent,
    ErrorEvent,
    GenerateJob,
    StartedEvent,
    TokenEvent,
    WorkerAdvert,
    decode_event,
)
from shared.settings import Settings
from tests.proxy import Proxy
from worker.consumer import Worker
from worker.devices import Devices
from worker.fake_engine import FakeEngine
from worker.main import build_engine


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(redis_url: str) -> SettingsFactory:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "engine": "fake",
            "host": f"127.0.0.1:{free_port()}",
            "worker_health_addr": f"127.0.0.1:{free_port()}",
            "heartbeat_interval_s": 0.2,
            "heartbeat_ttl_s": 1.0,
            "shutdown_grace_s": 2.0,
            "fake_token_delay_s": 0.005,
        }
        values.update(overrides)
        return Settings(**values)

    return make


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


ApiFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def api(make_settings: SettingsFactory) -> AsyncIterator[ApiFactory]:
    """``client = await api(**settings)``: a real uvicorn server in this event loop."""
    servers: list[tuple[_Server, asyncio.Task[None], httpx.AsyncClient]] = []

    async def start(**overrides: Any) -> httpx.AsyncClient:
        settings = make_settings(**overrides)
        config = uvicorn.Config(
            create_app(settings),
            host=settings.host.host,
            port=settings.host.port,
            log_config=None,
            access_log=False,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        client = httpx.AsyncClient(base_url=settings.host.url, timeout=30)
        servers.append((server, task, client))
        return client

    yield start
    for server, task, client in servers:
        await client.aclose()
        server.should_exit = True
        await task


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def worker(make_settings: SettingsFactory, redis_url: str) -> AsyncIterator[WorkerFactory]:
    """``w = await worker(**settings)``: an in-process Worker with FakeEngine, ready
    (``engine=FakeEngine(...)`` to pass one made by the test)."""
    running: list[tuple[Worker, asyncio.Task[None], Redis]] = []

    async def start(engine: FakeEngine | None = None, **overrides: Any) -> Worker:
        settings = make_settings(**overrides)
        client = Redis.from_url(settings.redis_url or redis_url)  # a proxy's, if given
        instance = Worker(settings, client, engine or build_engine(settings, Devices()))
        task = asyncio.create_task(instance.run())
        while not instance.ready:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        running.append((instance, task, client))
        return instance

    yield start
    for instance, task, client in running:
        instance.stop()
        await task
        await client.aclose()


Event = StartedEvent | TokenEvent | DoneEvent | ErrorEvent


def make_job(model: str = "gemma3:270m", **fields: Any) -> GenerateJob:
    """A job as the API would enqueue it (a chat saying "hi" unless told otherwise)."""
    now_ms = int(time.time() * 1000)
    values: dict[str, Any] = {
        "request_id": os.urandom(8).hex(),
        "model": model,
        "kind": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "enqueued_at_ms": now_ms,
        "deadline_ms": now_ms + 30_000,
    }
    values.update(fields)
    return GenerateJob.model_validate(values)


async def run_job(redis: Redis, job: GenerateJob, timeout_s: float = 10.0) -> list[Event]:
    """Enqueue ``job`` straight on its stream (no API) and collect its events to the last."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.token_channel(job.request_id))
    await pubsub.get_message(timeout=1)  # the confirmation: subscribed before the job exists
    events: list[Event] = []
    try:
        fields: dict[Any, Any] = dict(job.to_fields())
        await redis.xadd(keys.job_stream(job.model), fields)
        async with asyncio.timeout(timeout_s):
            while not events or not isinstance(events[-1], DoneEvent | ErrorEvent):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    events.append(decode_event(message["data"]))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    return events


async def read_advert(redis: Redis, worker_id: str) -> WorkerAdvert:
    raw = await redis.get(keys.worker_key(worker_id))
    assert raw is not None, f"{worker_id} has no advert"
    return WorkerAdvert.model_validate_json(raw)


ProcessFactory = Callable[..., subprocess.Popen[bytes]]


def worker_env(redis_url: str, worker_id: str, **settings: object) -> dict[str, str]:
    """The environment of a FakeEngine ``herd worker`` child: quick heartbeats, a probe
    port of its own, and ``settings`` as ``HERD_*`` (lists as JSON)."""
    env = {
        "HERD_REDIS_URL": redis_url,
        "HERD_ENGINE": "fake",
        "HERD_WORKER_ID": worker_id,
        "HERD_WORKER_HEALTH_ADDR": f"127.0.0.1:{free_port()}",
        "HERD_HEARTBEAT_INTERVAL_S": "0.2",
        "HERD_HEARTBEAT_TTL_S": "1.0",
        "HERD_FAKE_TOKEN_DELAY_S": "0.01",
        "HERD_SHUTDOWN_GRACE_S": "5",
    }
    for name, value in settings.items():
        text = orjson.dumps(value).decode() if isinstance(value, list) else str(value)
        env[f"HERD_{name.upper()}"] = text
    return env


#: Where each ``herd_process`` child writes its (JSON) log, by pid.
_LOGS: dict[int, Path] = {}


def process_log(child: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    """The JSON log lines a ``herd_process`` child has written so far."""
    lines = _LOGS[child.pid].read_bytes().splitlines()
    return [orjson.loads(line) for line in lines if line.startswith(b"{")]


@pytest.fixture
def herd_process(tmp_path: Path) -> Iterator[ProcessFactory]:
    """``p = herd_process("worker", HERD_...=...)``: a real ``herd`` child process, its log
    in a file (``process_log``), never a pipe nobody reads (that would block it)."""
    children: list[subprocess.Popen[bytes]] = []

    def start(command: str, **env: str) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, "HERD_LOG_FORMAT": "json", **env}
        path = tmp_path / f"{command}-{len(children)}.log"
        with path.open("wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "cli", command],
                env=full_env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        _LOGS[child.pid] = path
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def wait_for_http(url: str, timeout_s: float = 60.0, status: int = 200) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == status:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s} s")


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[Proxy]:
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    found = Proxy((host, int(port)))
    await found.start()
    yield found
    await found.close()
