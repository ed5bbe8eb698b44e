"""Run a rendered container as a local process: what the kubelet would start, minus the image.

The container's command, args and env are taken as rendered. Only what a pod has and this machine
lacks is translated, and each translation is explicit: the image's binaries come from this venv,
``valueFrom`` is resolved (Secrets from the rendering, ``metadata.name`` from a pod name), volume
mounts become temporary directories, and addresses the pod binds on all interfaces are rebound to
127.0.0.1 on free ports, remembering which container port each one stands for.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cli.ports import free_port
from shared.hostaddr import parse_host

from .chart import Obj, Rendered, container_port

VENV_BIN = Path(sys.executable).parent
#: HERD_* variables that are addresses the process binds.
BIND_VARIABLES = ("HERD_HOST", "HERD_WORKER_HEALTH_ADDR")


@dataclass
class LocalPod:
    """A container's local stand-in: its argv and env, and container port -> local port."""

    ctr: Obj
    argv: list[str]
    env: dict[str, str]
    ports: dict[int, int] = field(default_factory=dict)
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def local_port(self, port: int | str) -> int:
        """Where the container's port (a number or a declared name) is reachable here."""
        declared = container_port(self.ctr, port)
        assert declared in self.ports, f"nothing listens on container port {declared}"
        return self.ports[declared]

    def probe_url(self, probe: str) -> str:
        http_get = self.ctr[probe]["httpGet"]
        return f"http://127.0.0.1:{self.local_port(http_get['port'])}{http_get['path']}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log else ""


def resolve_env(rendered: Rendered, ctr: Obj, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it."""
    env: dict[str, str] = {}
    for entry in ctr.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        source = entry["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[entry["name"]] = rendered.secret_value(ref["name"], ref["key"])
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[entry["name"]] = pod_name
        else:
            raise AssertionError(f"cannot resolve {entry['name']}: {source}")
    return env


def local_mounts(ctr: Obj, workdir: Path) -> dict[str, Path]:
    """A fresh directory under ``workdir`` for each of the container's volume mounts."""
    mounts: dict[str, Path] = {}
    for mount in ctr.get("volumeMounts", []):
        mounts[mount["mountPath"]] = workdir / mount["name"]
        mounts[mount["mountPath"]].mkdir(parents=True, exist_ok=True)
    return mounts


def write_secret_files(rendered: Rendered, workload: Obj, ctr: Obj, workdir: Path) -> None:
    """Write the files of the container's ``secret`` and ``projected`` Secret volumes into their
    ``local_mounts`` directories, from the rendered Secrets, as the kubelet would."""
    volumes = {volume["name"]: volume for volume in workload["spec"]["template"]["spec"]["volumes"]}
    for mount in ctr.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            given = volume["secret"]
            sources = [{"secret": {"name": given["secretName"], "items": given["items"]}}]
        else:
            sources = volume.get("projected", {}).get("sources", [])
        for source in sources:
            for item in source.get("secret", {}).get("items", []):
                value = rendered.secret_value(source["secret"]["name"], item["key"])
                (workdir / mount["name"] / item["path"]).write_text(value)


def translate_paths(text: str, mounts: dict[str, Path]) -> str:
    """Replace mount paths by their local directories, in one pass, whole path components only."""
    if not mounts:
        return text
    alternatives = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=/|[^\w.-]|$)")
    return pattern.sub(lambda match: str(mounts[match[1]]), text)


def prepare(
    rendered: Rendered, ctr: Obj, workdir: Path, *, pod_name: str, drop: tuple[str, ...] = ()
) -> LocalPod:
    """Translate a rendered container into a local process description (not started yet)."""
    argv = [*ctr.get("command", []), *ctr.get("args", [])]
    env = {k: v for k, v in resolve_env(rendered, ctr, pod_name).items() if k not in drop}
    pod = LocalPod(ctr=ctr, argv=argv, env=env)
    mounts = local_mounts(ctr, workdir)
    pod.argv = [translate_paths(arg, mounts) for arg in pod.argv]
    # after translating: the venv may itself live under a mounted path such as /tmp
    if pod.argv[0] == "herd":
        pod.argv[0] = str(VENV_BIN / "herd")
    pod.env = {k: translate_paths(v, mounts) for k, v in pod.env.items()}
    for name in BIND_VARIABLES:
        if name in pod.env:
            bound = parse_host(pod.env[name])
            assert bound.host == "0.0.0.0", f"{name} should bind every interface in a pod"
            local_port = free_port()
            pod.ports[bound.port] = local_port
            pod.env[name] = f"127.0.0.1:{local_port}"
    return pod


def start(pod: LocalPod, workdir: Path, *, extra_path: Path | None = None) -> LocalPod:
    path = (
        os.pathsep.join(str(p) for p in (extra_path, VENV_BIN) if p) + os.pathsep + "/usr/bin:/bin"
    )
    base = {"PATH": path, "HOME": str(workdir), "LANG": "C.UTF-8", "TMPDIR": str(workdir)}
    pod.log = workdir / "output.log"
    with pod.log.open("wb") as log:
        pod.process = subprocess.Popen(
            pod.argv, env={**base, **pod.env}, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
        )
    return pod


def stop(pod: LocalPod, timeout_s: float) -> int:
    """SIGTERM, as the kubelet sends, then SIGKILL after ``timeout_s``; returns the exit code."""
    assert pod.process is not None
    if pod.process.poll() is None:
        pod.process.terminate()
    try:
        return pod.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pod.process.kill()
        pod.process.wait()
        raise AssertionError(f"{pod.argv} ignored SIGTERM for {timeout_s} s") from None


@contextlib.contextmanager
def running(*pods: LocalPod) -> Iterator[None]:
    try:
        yield
    finally:
        for pod in pods:
            if pod.process is not None and pod.process.poll() is None:
                pod.process.kill()
                pod.process.wait()


def wait_status(pod: LocalPod, url: str, status: int = 200, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        assert pod.process is not None
        if pod.process.poll() is not None:
            raise AssertionError(f"{pod.argv} exited with {pod.process.returncode}:\n{pod.logs()}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(url, timeout=1)
            if response.status_code == status:
                return
            last = f"{response.status_code} {response.text[:200]}"
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} in {timeout_s} s ({last}):\n{pod.logs()}")
