"""``herd serve``, ``herd api`` and ``herd worker`` as real processes: ports taken, and two
``herd serve`` on one machine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest

from cli.ports import free_port
from tests.api.test_metrics import API_FAMILIES
from tests.metrics_text import parse, value
from tests.worker.test_metrics import WORKER_FAMILIES

HERD = [sys.executable, "-m", "cli"]


def _env(**values: str) -> dict[str, str]:
    """This environment without any Herd setting of the caller's, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
    # a store of the test's own: `herd serve`'s default (~/.herd/models) may hold models
    store = tempfile.mkdtemp(prefix="herd-store-")
    ours = {"HERD_ENGINE": "fake", "HERD_LOG_FORMAT": "json", "HERD_MODELS_DIR": store}
    return {**env, **ours, **values}


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _refused(command: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [*HERD, command], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stderr
    return result.stderr


def test_api_on_a_taken_port_says_so_in_one_line(taken: int, redis_url: str) -> None:
    env = _env(HERD_REDIS_URL=redis_url, HERD_HOST=f"127.0.0.1:{taken}")
    assert _refused("api", env) == (
        f"Error: cannot listen on 127.0.0.1:{taken} (HERD_HOST): address already in use\n"
    )


def test_worker_on_a_taken_probe_port_says_so_in_one_line(taken: int, redis_url: str) -> None:
    env = _env(HERD_REDIS_URL=redis_url, HERD_WORKER_HEALTH_ADDR=f"127.0.0.1:{taken}")
    assert _refused("worker", env) == (
        f"Error: cannot listen on 127.0.0.1:{taken} (HERD_WORKER_HEALTH_ADDR): "
        "address already in use\n"
    )


def test_serve_on_a_taken_port_says_so_in_one_line(taken: int) -> None:
    assert _refused("serve", _env(HERD_HOST=f"127.0.0.1:{taken}")) == (
        f"Error: cannot listen on 127.0.0.1:{taken} (HERD_HOST): address already in use\n"
    )
    # a probe address the user chose is checked too (without one, serve picks a free port)
    probe = f"127.0.0.1:{taken}"
    env = _env(HERD_HOST=f"127.0.0.1:{free_port()}", HERD_WORKER_HEALTH_ADDR=probe)
    assert _refused("serve", env) == (
        f"Error: cannot listen on 127.0.0.1:{taken} (HERD_WORKER_HEALTH_ADDR): "
        "address already in use\n"
    )


def _serving(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> list[str]:
    """The models ``url`` lists once its worker has advertised one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"herd serve exited with {process.returncode}"
        try:
            models = [m["model"] for m in httpx.get(f"{url}/api/tags", timeout=1).json()["models"]]
        except httpx.HTTPError:
            models = []
        if models:
            return models
        time.sleep(0.1)
    raise TimeoutError(f"{url} listed no model within {timeout_s} s")


def test_two_serves_on_one_machine() -> None:
    ports = [free_port(), free_port()]
    serves = [
        subprocess.Popen(
            [*HERD, "serve"],
            env=_env(HERD_HOST=f"127.0.0.1:{port}", HERD_FAKE_MODELS=f'["m{port}:latest"]'),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        # each has its own Redis and a worker of its own, on a probe port of its own
        for port, serve in zip(ports, serves, strict=True):
            assert _serving(f"http://127.0.0.1:{port}", serve) == [f"m{port}:latest"]
    finally:
        for serve in serves:
            serve.send_signal(signal.SIGINT)  # Ctrl-C
        codes = [_stopped(serve) for serve in serves]
    assert codes == [0, 0]


def test_serve_opens_the_api_once_its_worker_serves() -> None:
    # the API's port opens after the worker advertised: no answer ever lacks the model
    port = free_port()
    env = _env(HERD_HOST=f"127.0.0.1:{port}", HERD_FAKE_MODELS='["early:latest"]')
    serve = subprocess.Popen([*HERD, "serve"], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, f"herd serve exited with {serve.returncode}"
            assert time.monotonic() < deadline, "the API never answered"
            try:
                first = httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.02)
        assert [m["model"] for m in first.json()["models"]] == ["early:latest"]
    finally:
        serve.send_signal(signal.SIGINT)
        assert _stopped(serve) == 0


def test_serve_stopped_while_its_worker_starts_exits_cleanly() -> None:
    env = _env(HERD_HOST=f"127.0.0.1:{free_port()}")
    serve = subprocess.Popen(
        [*HERD, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert serve.stderr is not None
    try:
        # Redis is up and the worker is being started; it is not ready this soon (imports)
        while b"embedded_redis_started" not in serve.stderr.readline():
            assert serve.poll() is None
        time.sleep(0.2)
        serve.send_signal(signal.SIGINT)
        assert _stopped(serve) == 0
    finally:
        serve.stderr.close()


def test_serve_starts_its_worker_again_when_it_dies() -> None:
    """As Ollama starts a new runner after one crashed: the server stays up, and the next
    request is served by the new worker."""
    port = free_port()
    env = _env(HERD_HOST=f"127.0.0.1:{port}", HERD_FAKE_MODELS='["again:latest"]')
    serve = subprocess.Popen([*HERD, "serve"], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    body = {"model": "again", "prompt": "hi", "stream": False}
    try:
        assert _serving(base, serve) == ["again:latest"]
        worker = _child_running(serve, "worker")
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, f"herd serve exited with {serve.returncode}"
            assert time.monotonic() < deadline, "no worker served again"
            with contextlib.suppress(httpx.TransportError):
                answer = httpx.post(f"{base}/api/generate", json=body, timeout=30)
                if answer.status_code == 200:
                    break
            time.sleep(0.2)
        assert answer.json()["done"] is True
        assert _child_running(serve, "worker") != worker
    finally:
        serve.send_signal(signal.SIGINT)
        assert _stopped(serve) == 0


def _child_running(parent: subprocess.Popen[bytes], role: str) -> int:
    """The pid of ``parent``'s live child running ``herd <role>`` (from /proc)."""
    for task in os.listdir(f"/proc/{parent.pid}/task"):
        with open(f"/proc/{parent.pid}/task/{task}/children") as children:
            for pid in map(int, children.read().split()):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if cmdline.read().split(b"\0")[-2:-1] == [role.encode()]:
                        return pid
    raise AssertionError(f"no {role} child")


def _stopped(process: subprocess.Popen[bytes]) -> int:
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def test_serve_exposes_both_metrics_pages_to_prometheus_parser() -> None:
    """A running `herd serve`: the API's /metrics and the worker's (its health port) parse
    with Prometheus' own text parser and carry the families dashboards depend on."""
    api, probes = free_port(), free_port()
    env = _env(
        HERD_HOST=f"127.0.0.1:{api}",
        HERD_WORKER_HEALTH_ADDR=f"127.0.0.1:{probes}",
        HERD_FAKE_MODELS='["watched:latest"]',
    )
    serve = subprocess.Popen([*HERD, "serve"], env=env, stdout=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{api}"
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None and time.monotonic() < deadline
            try:
                httpx.get(f"{base}/api/version", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        body = {"model": "watched", "prompt": "hi", "stream": False}
        assert httpx.post(f"{base}/api/generate", json=body, timeout=30).status_code == 200
        api_types, _ = parse(httpx.get(f"{base}/metrics", timeout=5).text)
        worker_page = httpx.get(f"http://127.0.0.1:{probes}/metrics", timeout=5).text
        worker_types, worker_samples = parse(worker_page)
    finally:
        serve.send_signal(signal.SIGINT)
        assert _stopped(serve) == 0
    assert {name: api_types.get(name) for name in API_FAMILIES} == API_FAMILIES
    assert {name: worker_types.get(name) for name in WORKER_FAMILIES} == WORKER_FAMILIES
    assert value(worker_samples, "herd_jobs_total", model="watched:latest", outcome="stop") == 1
