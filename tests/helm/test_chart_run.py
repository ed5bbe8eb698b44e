"""Run what the chart describes: its API, worker and Redis containers as local processes.

The processes get the rendered command, args and env (see ``localrun`` for the few translations a
laptop needs). The worker uses ``HERD_ENGINE=fake``, so no model is loaded. The probes must answer
on the paths and ports the chart declares, and a chat request must come back through the port the
API Service targets.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
import redis.exceptions

from cli.embedded import redis_server_binary
from cli.ports import free_port

from .chart import Obj, container, env_entries, render, render_profile
from .localrun import (
    local_mounts,
    prepare,
    running,
    start,
    stop,
    translate_paths,
    wait_status,
    write_secret_files,
)

#: A database of its own on the session's redis-server, so no other test sees these workers.
DATABASE = 11
CHAT = {
    "model": "gemma3:270m",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": False,
}


def _with_database(url: str, database: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _service_target(service: Obj, name: str) -> str | int:
    [port] = [p for p in service["spec"]["ports"] if p["name"] == name]
    target: str | int = port["targetPort"]
    return target


def test_api_and_worker_serve_a_chat(redis_url: str, tmp_path: Path) -> None:
    rendered = render_profile("default")
    api_ctr = container(rendered.component("Deployment", "api"))
    worker_ctr = container(rendered.component("Deployment", "worker"))
    assert env_entries(api_ctr)["HERD_REDIS_URL"]["value"].startswith("redis://herd-redis:")
    # The session's redis-server stands in for the Redis Service. It has no password, so the
    # chart's HERD_REDIS_PASSWORD_FILE is left out here; test_bundled_redis_… runs it with one.
    url = _with_database(redis_url, DATABASE)
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    drop = ("HERD_REDIS_PASSWORD_FILE",)
    api = prepare(rendered, api_ctr, tmp_path / "api", pod_name="herd-api-0", drop=drop)
    worker = prepare(rendered, worker_ctr, tmp_path / "worker", pod_name="herd-worker-0", drop=drop)
    for pod in (api, worker):
        pod.env |= {"HERD_REDIS_URL": url, "HERD_ENGINE": "fake", "HERD_LOG_FORMAT": "json"}
    assert worker.env["HERD_WORKER_ID"] == "herd-worker-0"
    assert worker.env["HERD_MODELS_DIR"] == str(tmp_path / "worker" / "models")

    with running(api, worker):
        start(worker, tmp_path / "worker")
        start(api, tmp_path / "api")
        wait_status(api, api.probe_url("livenessProbe"))
        wait_status(api, api.probe_url("readinessProbe"))
        wait_status(worker, worker.probe_url("livenessProbe"))
        wait_status(worker, worker.probe_url("startupProbe"))
        wait_status(worker, worker.probe_url("readinessProbe"))

        service = rendered.component("Service", "api")
        port = api.local_port(_service_target(service, "http"))
        response = httpx.post(f"http://127.0.0.1:{port}/api/chat", json=CHAT, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["done"] is True
        assert body["message"]["role"] == "assistant" and body["message"]["content"]

        # SIGTERM, as the kubelet sends after preStop: both drain and exit well within the
        # grace period (uvicorn re-raises SIGTERM once it has shut down, hence -SIGTERM).
        assert stop(api, timeout_s=20) in (0, -signal.SIGTERM), api.logs()
        assert stop(worker, timeout_s=20) == 0, worker.logs()
    with redis.Redis.from_url(url) as client:
        client.flushdb()


def test_bundled_redis_runs_with_the_secret_and_api_authenticates(tmp_path: Path) -> None:
    bundled_redis_port = free_port()
    rendered = render({"redis": {"port": bundled_redis_port}})
    statefulset = rendered.component("StatefulSet", "redis")
    redis_ctr = container(statefulset)
    server = prepare(rendered, redis_ctr, tmp_path / "redis", pod_name="herd-redis-0")
    mounts = local_mounts(redis_ctr, tmp_path / "redis")
    password = rendered.secret_value("herd-redis", "redis-password")
    for volume in statefulset["spec"]["template"]["spec"]["volumes"]:
        if "configMap" in volume:
            data = rendered.get("ConfigMap", volume["configMap"]["name"])["data"]
            for key, text in data.items():
                (tmp_path / "redis" / volume["name"] / key).write_text(
                    translate_paths(text, mounts)
                )
        if "secret" in volume:
            for item in volume["secret"]["items"]:
                value = rendered.secret_value(volume["secret"]["secretName"], item["key"])
                (tmp_path / "redis" / volume["name"] / item["path"]).write_text(value)
    # The password is a file of the Secret, not an env var (checkov's CKV_K8S_35).
    assert not any(password in value for value in server.env.values())
    assert (mounts["/etc/redis-auth"] / "password").read_text() == password

    api_deployment = rendered.component("Deployment", "api")
    api_ctr = container(api_deployment)
    api = prepare(rendered, api_ctr, tmp_path / "api", pod_name="herd-api-0")
    write_secret_files(rendered, api_deployment, api_ctr, tmp_path / "api")
    chart_url = urlsplit(api.env["HERD_REDIS_URL"])
    assert chart_url.hostname == statefulset["metadata"]["name"]
    assert chart_url.port == bundled_redis_port
    # The Service's DNS name does not resolve here; the port and the password stay the chart's.
    api.env["HERD_REDIS_URL"] = urlunsplit(chart_url._replace(netloc=f"127.0.0.1:{chart_url.port}"))
    # The API reads it from a file of the same Secret too, never from its environment.
    assert not any(password in value for value in api.env.values())
    assert Path(api.env["HERD_REDIS_PASSWORD_FILE"]).read_text() == password

    redis_bin = Path(redis_server_binary()).parent
    with running(server, api):
        start(server, tmp_path / "redis", extra_path=redis_bin)
        with redis.Redis(port=bundled_redis_port, password=password) as admin:
            _wait_for_redis(admin)
            assert admin.config_get("appendonly") == {"appendonly": "yes"}
            assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            assert admin.config_get("dir") == {"dir": str(mounts["/data"])}
            admin.xadd("herd:jobs:gemma3:270m", {"job": "{}"})
        with (
            redis.Redis(port=bundled_redis_port) as anonymous,
            pytest.raises(redis.exceptions.AuthenticationError),
        ):
            anonymous.ping()
        probe = [translate_paths(a, mounts) for a in redis_ctr["readinessProbe"]["exec"]["command"]]
        _run_probe(probe, server.env, redis_bin, mounts["/etc/redis-auth"] / "password")

        start(api, tmp_path / "api")
        wait_status(api, api.probe_url("readinessProbe"))
        assert stop(api, timeout_s=20) in (0, -signal.SIGTERM), api.logs()
        assert stop(server, timeout_s=10) == 0, server.logs()
    # The job written above is in the append-only file on the data volume.
    aof = [p for p in mounts["/data"].rglob("appendonly*") if p.is_file()]
    assert any(b"herd:jobs:gemma3:270m" in p.read_bytes() for p in aof)


def _wait_for_redis(client: redis.Redis) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _run_probe(command: list[str], env: dict[str, str], redis_bin: Path, secret: Path) -> None:
    path = f"{redis_bin}:/usr/bin:/bin"
    result = subprocess.run(command, env={**env, "PATH": path}, timeout=10, check=False)
    assert result.returncode == 0, "the readiness probe fails against a healthy Redis"
    secret.write_text("wrong")
    result = subprocess.run(
        command, env={**env, "PATH": path}, timeout=10, check=False, capture_output=True
    )
    assert result.returncode != 0, "the readiness probe passes without the right password"
