"""A Herd cluster as real processes, shared by the client tier (``tests/clients``) and the
contract tier (``tests/contract``): one ``herd api``, FakeEngine workers, and on demand one
llama worker with the real gemma3:270m.

The cluster has its **own** redis-server. The session ``redis_url`` is flushed by other
tests, and its default FakeEngine model is ``gemma3:270m``: a llama worker on that Redis
would take their jobs.

Models of the fake workers (capabilities come from ``HERD_FAKE_CAPABILITIES``):

- ``fake-tools:latest`` on two workers: completion, tools, thinking, insert, embedding;
- ``fake-plain:latest``: completion only (tools/think/suffix must be refused);
- ``fake-embed:latest``: embedding only (generate/chat must be refused).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cli.embedded import EmbeddedRedis
from cli.ports import free_port

TOOLS_MODEL = "fake-tools:latest"
PLAIN_MODEL = "fake-plain:latest"
EMBED_MODEL = "fake-embed:latest"
GEMMA = "gemma3:270m"
#: Small, so prompts over the limit are cheap to evaluate on two cores.
GEMMA_NUM_CTX = 512
ALL_CAPABILITIES = ["completion", "tools", "thinking", "insert", "embedding"]
#: The API refuses bodies above this (small, so the contract can test the limit cheaply).
MAX_BODY_BYTES = 1024 * 1024

_COMMON = {
    "HERD_LOG_FORMAT": "json",
    "HERD_LOG_LEVEL": "warning",
    "HERD_HEARTBEAT_INTERVAL_S": "0.5",
    "HERD_HEARTBEAT_TTL_S": "2",
    "HERD_SHUTDOWN_GRACE_S": "2",
    "HERD_FAKE_TOKEN_DELAY_S": "0.001",
}


@dataclass
class Cluster:
    log_dir: Path
    redis: EmbeddedRedis = field(default_factory=EmbeddedRedis)
    api_port: int = field(default_factory=free_port)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    gemma: bool = False
    failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, name: str, role: str, env: dict[str, str]) -> None:
        log = (self.log_dir / f"{name}.log").open("wb")
        full = {**os.environ, **_COMMON, "HERD_REDIS_URL": self.redis.url, **env}
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", "cli", role],
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def _worker(self, name: str, env: dict[str, str]) -> int:
        port = free_port()
        self._spawn(
            name,
            "worker",
            {"HERD_WORKER_ID": name, "HERD_WORKER_HEALTH_ADDR": f"127.0.0.1:{port}", **env},
        )
        return port

    def _fake(self, name: str, model: str, capabilities: list[str]) -> int:
        return self._worker(
            name,
            {
                "HERD_ENGINE": "fake",
                "HERD_FAKE_MODELS": json.dumps([model]),
                "HERD_FAKE_CAPABILITIES": json.dumps(capabilities),
            },
        )

    def start(self) -> None:
        self.redis.start()
        self._spawn(
            "api",
            "api",
            {
                "HERD_HOST": f"127.0.0.1:{self.api_port}",
                "HERD_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
            },
        )
        health = [
            self._fake("fake-a", TOOLS_MODEL, ALL_CAPABILITIES),
            self._fake("fake-b", TOOLS_MODEL, ALL_CAPABILITIES),
            self._fake("fake-plain", PLAIN_MODEL, ["completion"]),
            self._fake("fake-embed", EMBED_MODEL, ["embedding"]),
        ]
        self._ready(health, [TOOLS_MODEL, PLAIN_MODEL, EMBED_MODEL], timeout_s=60)

    def add_gemma(self) -> None:
        if self.gemma:
            return
        port = self._worker("gemma", {"HERD_ENGINE": "llama", "HERD_NUM_CTX": str(GEMMA_NUM_CTX)})
        self._ready([port], [GEMMA], timeout_s=180)
        self.gemma = True

    def _ready(self, health_ports: list[int], models: list[str], timeout_s: float) -> None:
        urls = [f"{self.url}/readyz", *(f"http://127.0.0.1:{p}/readyz" for p in health_ports)]
        try:
            deadline = time.monotonic() + timeout_s
            for url in urls:
                self._wait_for_http(url, deadline)
            self._wait_for_models(models, deadline=time.monotonic() + 10)
        except (TimeoutError, ChildProcessError) as exc:
            raise RuntimeError(f"{exc}\n{self.logs()}") from None

    def _wait_for_http(self, url: str, deadline: float) -> None:
        """Like ``wait_for_http``, but a child that dies fails at once, not at the deadline."""
        while time.monotonic() < deadline:
            dead = [name for name, child in self.children.items() if child.poll() is not None]
            if dead:
                raise ChildProcessError(f"{', '.join(dead)} exited while waiting for {url}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{url} did not answer 200 in time")

    def _wait_for_models(self, models: list[str], deadline: float) -> None:
        listed: set[str] = set()
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                body = httpx.get(f"{self.url}/api/tags", timeout=2).json()
                listed = {m["model"] for m in body["models"]}
                if set(models) <= listed:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"/api/tags lists {sorted(listed)}, not all of {models}")

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for name, child in self.children.items():
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")[-tail:]
            parts.append(f"--- {name} (exit {child.poll()}) ---\n{text}")
        return "\n".join(parts)

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        for child in self.children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.redis.stop()


_KEY = pytest.StashKey[Cluster]()


def shared_cluster(config: pytest.Config, log_dir: Path) -> Cluster:
    """The session's cluster, started on first use; both test packages get the same one."""
    cluster = config.stash.get(_KEY, None)
    if cluster is None:
        cluster = Cluster(log_dir)
        config.stash[_KEY] = cluster
        config.add_cleanup(cluster.stop)
        try:
            cluster.start()
        except BaseException as exc:
            cluster.failure = exc
            raise
    if cluster.failure is not None:
        raise RuntimeError("the Herd cluster failed to start") from cluster.failure
    return cluster


def _log_dir(factory: pytest.TempPathFactory) -> Path:
    path = factory.getbasetemp() / "herd-cluster"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def herd_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Base URL of the running cluster (fake models only are guaranteed)."""
    return shared_cluster(request.config, _log_dir(tmp_path_factory)).url


@pytest.fixture(scope="session")
def gemma_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same cluster, with a llama worker serving the real gemma3:270m joined to it."""
    cluster = shared_cluster(request.config, _log_dir(tmp_path_factory))
    cluster.add_gemma()
    return cluster.url
