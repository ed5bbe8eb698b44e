"""API keys in the chart: `api.auth.keys` becomes a Secret read as HERD_API_KEYS, and
`api.auth.existingSecret` a file at HERD_API_KEYS_FILE; the rendered API enforces both."""

from __future__ import annotations

import secrets
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import helm_python as helm
import httpx
import pytest
import redis

from api.auth import load_keys
from shared.settings import Settings

from .chart import container, env_entries, pod_spec, render
from .localrun import local_mounts, prepare, running, start, stop, wait_status

KEY = secrets.token_urlsafe(24)
FILE_KEY = secrets.token_urlsafe(24)
DATABASE = 12


def test_no_keys_no_secret_no_file() -> None:
    rendered = render()
    api = container(rendered.component("Deployment", "api"))
    assert {"HERD_API_KEYS", "HERD_API_KEYS_FILE"}.isdisjoint(env_entries(api))
    assert not [s for s in rendered.of_kind("Secret") if "api-keys" in s["metadata"]["name"]]
    assert "Bearer" not in rendered.notes


def test_keys_become_a_secret_read_as_herd_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"api": {"auth": {"keys": [f"app:{KEY}:inference"], "requestsPerMinute": 60}}}
    rendered = render(values)
    deployment = rendered.component("Deployment", "api")
    env = env_entries(container(deployment))
    ref = env["HERD_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert rendered.secret_value(ref["name"], ref["key"]) == f"app:{KEY}:inference"
    assert env["HERD_KEY_REQUESTS_PER_MINUTE"]["value"] == "60"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/api-keys" in annotations  # a new key rolls the pods
    assert KEY not in str(deployment)
    assert "WARNING" not in rendered.notes and "Bearer" in rendered.notes

    for name in [name for name in env if name.startswith("HERD_")]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HERD_API_KEYS", rendered.secret_value(ref["name"], ref["key"]))
    monkeypatch.setenv("HERD_KEY_REQUESTS_PER_MINUTE", env["HERD_KEY_REQUESTS_PER_MINUTE"]["value"])
    [key] = load_keys(Settings())
    assert key.name == "app" and key.requests_per_minute == 60


def test_an_existing_secret_is_mounted_as_the_keys_file() -> None:
    rendered = render({"api": {"auth": {"existingSecret": "team-keys", "existingSecretKey": "k"}}})
    spec = pod_spec(rendered.component("Deployment", "api"))
    api = container(rendered.component("Deployment", "api"))
    [volume] = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "team-keys"
    assert volume["secret"]["items"] == [{"key": "k", "path": "api-keys"}]
    [mount] = [m for m in api["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    path = env_entries(api)["HERD_API_KEYS_FILE"]["value"]
    assert path == f"{mount['mountPath']}/api-keys"
    assert "HERD_API_KEYS" not in env_entries(api)


@pytest.mark.parametrize("values", [{"keys": ["a,b"]}, {"keys": ["a b"]}, {"keys": [""]}])
def test_schema_refuses_entries_herd_would_split(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render({"api": {"auth": values}})


def test_notes_say_how_to_turn_keys_on() -> None:
    notes = render({"api": {"service": {"type": "LoadBalancer"}}}).notes
    assert "WARNING" in notes
    assert "api.auth.existingSecret=herd-api-keys" in notes
    assert "create secret generic herd-api-keys --from-file=api-keys=" in notes


def test_the_rendered_api_enforces_both_sources(redis_url: str, tmp_path: Path) -> None:
    values = {"api": {"auth": {"keys": [f"app:{KEY}"], "existingSecret": "team-keys"}}}
    rendered = render(values)
    api_ctr = container(rendered.component("Deployment", "api"))
    workdir = tmp_path / "api"
    mounts = local_mounts(api_ctr, workdir)
    (mounts["/etc/herd/api-keys"] / "api-keys").write_text(f"ops:{FILE_KEY}:admin\n")
    api = prepare(
        rendered, api_ctr, workdir, pod_name="herd-api-0", drop=("HERD_REDIS_PASSWORD_FILE",)
    )
    url = urlsplit(redis_url)._replace(path=f"/{DATABASE}")
    api.env["HERD_REDIS_URL"] = urlunsplit(url)
    with redis.Redis.from_url(api.env["HERD_REDIS_URL"]) as client:
        client.flushdb()
    with running(api):
        start(api, workdir)
        wait_status(api, api.probe_url("readinessProbe"))  # probes need no key
        wait_status(api, api.probe_url("livenessProbe"))
        base = f"http://127.0.0.1:{api.local_port('http')}"
        assert httpx.get(f"{base}/api/tags").status_code == 401
        for key in (KEY, FILE_KEY):
            headers = {"Authorization": f"Bearer {key}"}
            assert httpx.get(f"{base}/api/tags", headers=headers).status_code == 200
        admin_only = {"Authorization": f"Bearer {FILE_KEY}"}
        assert httpx.post(f"{base}/api/chat", json={}, headers=admin_only).status_code == 403
        assert stop(api, timeout_s=20) in (0, -signal.SIGTERM), api.logs()
    assert KEY not in api.logs() and FILE_KEY not in api.logs()
