"""A Redis that goes away and comes back (AOF, same port): no Herd process exits, requests
meanwhile get a 503 in bounded time, and service resumes by itself."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis.asyncio import Redis

from cli.embedded import EmbeddedRedis
from cli.ports import free_port
from shared import keys
from tests.conftest import ProcessFactory, wait_for_http, worker_env
from tests.polling import until

CHAT = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@dataclass
class _Herd:
    server: EmbeddedRedis
    url: str
    children: list[subprocess.Popen[bytes]]


@contextlib.asynccontextmanager
async def _herd(
    herd_process: ProcessFactory, tmp_path: Path, **worker_settings: object
) -> AsyncIterator[_Herd]:
    """A Redis with AOF on a data folder of its own (restartable on its port), one FakeEngine
    worker and one API process, ready."""
    data = tmp_path / "redis"
    data.mkdir()
    server = EmbeddedRedis(data_dir=data, appendonly=True)
    server.start()
    try:
        port = free_port()
        env = worker_env(server.url, "survivor", **worker_settings)
        worker = herd_process("worker", **env)
        api = herd_process("api", **{**env, "HERD_HOST": f"127.0.0.1:{port}"})
        url = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_for_http, f"{url}/readyz")
        yield _Herd(server, url, [worker, api])
    finally:
        server.stop()


async def test_a_redis_restart_costs_no_process_and_service_resumes(
    herd_process: ProcessFactory, tmp_path: Path
) -> None:
    async with _herd(herd_process, tmp_path) as herd:
        server = herd.server
        async with httpx.AsyncClient(base_url=herd.url, timeout=30) as client:
            assert (await client.post("/api/chat", json=CHAT)).status_code == 200
            server.process.kill()  # type: ignore[union-attr]
            server.process.wait()  # type: ignore[union-attr]
            started = time.monotonic()
            during = await client.post("/api/chat", json=CHAT)
            assert during.status_code == 503, during.text
            assert "redis" in during.json()["error"]
            assert time.monotonic() - started < 10  # bounded: never a hang
            # the same port and data: the AOF brings the streams and groups back
            server.start()
            back = time.monotonic()
            while True:
                answer = await client.post("/api/chat", json=CHAT)
                if answer.status_code == 200:
                    break
                assert time.monotonic() - back < 15, answer.text
                await asyncio.sleep(0.2)
        assert all(child.poll() is None for child in herd.children)  # nobody restarted


async def test_a_job_queued_before_a_redis_restart_runs_after_it(
    herd_process: ProcessFactory, tmp_path: Path
) -> None:
    async with _herd(herd_process, tmp_path, num_parallel=1, fake_token_delay_s=0.3) as herd:
        server, url = herd.server, herd.url
        async with (
            httpx.AsyncClient(base_url=url, timeout=60) as client,
            Redis.from_url(server.url) as redis,
        ):
            streaming = client.stream("POST", "/api/chat", json={**CHAT, "stream": True})
            async with streaming as first:
                lines = first.aiter_lines()
                await anext(lines)  # the one slot is taken
                queued = asyncio.create_task(client.post("/api/chat", json=CHAT))

                async def both_in() -> bool:
                    return bool(await redis.xlen(keys.job_stream("gemma3:270m")) == 2)

                await until(both_in, timeout_s=10)
                server.process.kill()  # type: ignore[union-attr]
                server.process.wait()  # type: ignore[union-attr]
                rest = [line async for line in lines if line]
            assert "error" in rest[-1]  # the running stream lost chunks: one error line
            await asyncio.sleep(1.0)
            server.start()
            answer = await queued  # the queued one waited through it, and ran
        assert answer.status_code == 200, answer.text
        assert answer.json()["done"] is True
