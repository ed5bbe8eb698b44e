"""Herd as a client sees it: an embedded redis-server, ``herd worker`` and ``herd api`` as
processes, and streaming httpx clients on ``/api/generate`` (raw prompt, greedy)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson

from bench.common import MODEL, Stream, wait_http
from cli.embedded import EmbeddedRedis
from cli.ports import free_port


class Cluster:
    """``with Cluster(env) as c: c.url`` — Redis, one worker and one API process.

    ``env`` adds worker/API settings (``HERD_NUM_PARALLEL``, ``HERD_ENGINE``...); their
    logs go to a temporary folder, printed if start-up fails."""

    def __init__(self, env: dict[str, str], *, workers: int = 1) -> None:
        self._env = env
        self._workers = workers
        self._redis = EmbeddedRedis()
        self._children: list[subprocess.Popen[bytes]] = []
        #: name -> pid of each process (redis, worker0..., api), for CPU accounting
        self.pids: dict[str, int] = {}
        self._logs = Path(tempfile.mkdtemp(prefix="herd-bench-"))
        self.api_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def __enter__(self) -> Cluster:
        self._redis.start()
        if self._redis.process is not None:
            self.pids["redis"] = self._redis.process.pid
        try:
            env = {
                **os.environ,
                "HERD_REDIS_URL": self._redis.url,
                "HERD_HOST": f"127.0.0.1:{self.api_port}",
                "HERD_LOG_LEVEL": "warning",
                "HERD_LOG_FORMAT": "json",
                **self._env,
            }
            health = []
            for index in range(self._workers):
                port = free_port()
                health.append(port)
                env_w = {
                    "HERD_WORKER_ID": f"bench-worker{index}",  # one host, distinct workers
                    **env,
                    "HERD_WORKER_HEALTH_ADDR": f"127.0.0.1:{port}",
                }
                self._spawn(f"worker{index}", "worker", env_w)
            self._spawn("api", "api", env)
            for port, child in zip(health, self._children, strict=False):
                wait_http(f"http://127.0.0.1:{port}/readyz", alive=child)
            wait_http(f"{self.url}/readyz", alive=self._children[-1])
        except BaseException:
            self._print_logs()
            self.__exit__(None, None, None)
            raise
        return self

    def _spawn(self, name: str, role: str, env: dict[str, str]) -> None:
        with (self._logs / f"{name}.log").open("wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "cli", role], env=env, stdout=log, stderr=log
            )
        self._children.append(child)
        self.pids[name] = child.pid

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system, all threads) each process has used so far."""
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def _print_logs(self) -> None:
        for path in sorted(self._logs.glob("*.log")):
            print(f"--- {path}", file=sys.stderr)
            print(path.read_text(errors="replace")[-4000:], file=sys.stderr)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for child in self._children:
            child.terminate()
        for child in self._children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        self._children.clear()
        self._redis.stop()


def cpu_seconds(pid: int) -> float:
    """From /proc (Linux; 0 elsewhere): utime + stime, fields 14 and 15 of its stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def llama_env(slots: int, n_ctx: int) -> dict[str, str]:
    """The worker's settings for the real model (n_ctx per slot, as on the other sides)."""
    return {"HERD_NUM_PARALLEL": str(slots), "HERD_NUM_CTX": str(n_ctx)}


def body(text: str, new_tokens: int, *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": text,
        "raw": True,
        "stream": stream,
        "options": {"temperature": 0, "num_predict": new_tokens},
    }


def stream_sync(client: httpx.Client, text: str, new_tokens: int) -> Stream:
    """One streaming request; TTFT ends at the first chunk with non-empty text."""
    result = Stream(sent=time.perf_counter())
    with client.stream("POST", "/api/generate", json=body(text, new_tokens)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            _take(result, line)
    result.ended = time.perf_counter()
    return result


async def stream_async(client: httpx.AsyncClient, text: str, new_tokens: int) -> Stream:
    result = Stream(sent=time.perf_counter())
    async with client.stream("POST", "/api/generate", json=body(text, new_tokens)) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            _take(result, line)
    result.ended = time.perf_counter()
    return result


SERVER_TIMINGS = ("load_duration", "prompt_eval_duration", "prompt_eval_count", "total_duration")


def _take(result: Stream, line: str) -> None:
    if not line:
        return
    now = time.perf_counter()
    chunk = orjson.loads(line)
    if "error" in chunk:
        raise RuntimeError(f"herd: {chunk['error']}")
    if chunk.get("response"):
        result.chunks.append(now)
    if chunk.get("done"):
        result.tokens = int(chunk.get("eval_count", 0))
        result.server = {k: int(chunk.get(k, 0)) for k in SERVER_TIMINGS}


async def concurrent(url: str, texts: list[str], new_tokens: int) -> list[Stream]:
    """All of ``texts`` at once, one connection each."""
    limits = httpx.Limits(max_connections=len(texts), max_keepalive_connections=len(texts))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        return list(await asyncio.gather(*(stream_async(client, t, new_tokens) for t in texts)))
