"""checkov's Kubernetes checks on every profile in helm/ci, rendered as `helm template` would.

checkov has a large dependency tree that conflicts with the project's pins, so it lives in a venv
of its own, created once (``python -m venv`` + ``pip install checkov==CHECKOV_VERSION``) in
pytest's cache dir and kept across sessions; ``HERD_CHECKOV=/path/to/checkov`` uses another one
(e.g. offline). One checkov run scans every profile, each rendered into a directory of its own
under a release named after it (``herd-<profile>``): checkov's graph checks (CKV2_*: does a
NetworkPolicy select this pod?) join objects by their labels across files and namespaces, and
distinct ``app.kubernetes.io/instance`` labels keep one profile's NetworkPolicies from covering
another's pods.

Every failed check must be fixed in the chart or listed below with its reason: ``SKIPPED`` for a
check that does not apply to Herd anywhere, ``ALLOWED`` for one check on one workload only.
Anything security-relevant (privilege, capabilities, root and uids, host namespaces, service
account tokens, probes, memory requests and limits, secrets) is not skipped.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .chart import (
    NAMESPACE,
    PROFILES,
    RELEASE,
    chart,
    container,
    env_entries,
    merged_values,
    pod_spec,
    profile_values,
    render,
    render_profile,
)

CHECKOV_VERSION = "3.3.30"
#: failed checks only, no code blocks, and no download from Prisma Cloud (none is needed)
FLAGS = ("--compact", "--quiet", "--skip-download")

#: Checks that do not apply to Herd, in any profile: check id -> why.
SKIPPED: dict[str, str] = {
    "CKV_K8S_11": (
        "CPU limits: a CFS quota throttles token streaming, llama.cpp's threads and Redis' event "
        "loop in bursts (latency spikes, not savings); CPU requests are set, and the cpu-only "
        "profile, whose workers share nodes, sets limits on purpose"
    ),
    "CKV_K8S_15": (
        "imagePullPolicy Always: tags are pinned (the appVersion, a Redis patch release) and the "
        "worker image is gigabytes; IfNotPresent is right, and values can set Always"
    ),
    "CKV_K8S_43": (
        "image digests: the chart cannot know the digest of the image a user builds or mirrors; "
        "image.tag takes `tag@sha256:...` to pin one (docs/operations.md, Production checklist)"
    ),
    "CKV_K8S_21": (
        "default namespace: the chart sets no metadata.namespace, as Helm charts do; objects go to "
        "the release's namespace (`helm install --namespace`)"
    ),
}

#: (check id, kind, component) -> why that one workload fails that check. Each entry is
#: narrowed further by ``_allowed_here``.
ALLOWED: dict[tuple[str, str, str], str] = {
    ("CKV2_K8S_6", "Pod", "api"): (
        "pods without a NetworkPolicy: the API's is opt-in (api.networkPolicy.enabled), as only "
        "the user knows its clients (an ingress controller, a LoadBalancer's addresses, in-cluster "
        "front ends); allowed only in profiles that leave it off, production-like turns it on"
    ),
    ("CKV2_K8S_6", "Pod", "worker"): (
        "pods without a NetworkPolicy: the workers' is opt-in (worker.networkPolicy.enabled), as "
        "its egress rules need the cluster's DNS pods' labels and the registries models come "
        "from; allowed only in profiles that leave it off, production-like turns it on"
    ),
    ("CKV_K8S_22", "Deployment", "worker"): (
        "read-only root filesystem: off by default on GPU workers only (worker."
        "containerSecurityContext; some GPU runtimes' hooks write into the container's root); "
        "the cpu-only profile turns it on and passes"
    ),
}

#: The one secret the chart may put in an env var (CKV_K8S_35): api.auth.keys, the inline form
#: of API keys, as HERD_API_KEYS (by secretKeyRef). Redis passwords are files
#: (HERD_REDIS_PASSWORD_FILE, HERD_REDIS_SENTINEL_PASSWORD_FILE), and so are keys from
#: api.auth.existingSecret (HERD_API_KEYS_FILE). No profile sets api.auth.keys, so CKV_K8S_35
#: passes on every one and ALLOWED has no entry for it; a release that sets api.auth.keys
#: fails it, as it should (api.auth.existingSecret is the recommended form).
SECRET_ENV = frozenset({"HERD_API_KEYS"})


@dataclass(frozen=True)
class Finding:
    profile: str
    check_id: str
    check_name: str
    resource: str  # Kind.namespace.name; a graph check's Pod: Kind.namespace.name.<labels>
    file: str
    component: str | None  # the object's app.kubernetes.io/component label

    @property
    def kind(self) -> str:
        return self.resource.split(".", 1)[0]

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.check_id, self.kind, self.component)


@dataclass(frozen=True)
class Scan:
    failed: tuple[Finding, ...]
    summary: dict[str, int]
    seconds: float


def _checkov_venv(cache_dir: Path) -> Path:
    """The checkov executable of a venv under ``cache_dir``, created on first use."""
    venv = cache_dir / "venv"
    checkov = venv / "bin" / "checkov"
    stamp = venv / f".installed-checkov-{CHECKOV_VERSION}"
    with (cache_dir / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator under pytest-xdist
        if stamp.exists():
            return checkov
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        result = subprocess.run(
            [*pip, "--disable-pip-version-check", f"checkov=={CHECKOV_VERSION}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (
            f"cannot install checkov=={CHECKOV_VERSION} (PyPI unreachable? set HERD_CHECKOV to a "
            f"checkov executable):\n{result.stderr[-4000:]}"
        )
        stamp.touch()
    return checkov


#: (kind, name) -> the object's component label, of one profile's rendering
Components = dict[tuple[str, str], str | None]


def _render(profile: str, out: Path) -> Components:
    """The profile's manifests under ``out``, one file per template, as rendered."""
    manifests = chart().render(
        profile_values(profile), name=f"{RELEASE}-{profile}", namespace=NAMESPACE, is_install=True
    )
    components: Components = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        for doc in yaml.safe_load_all(text):
            if doc:
                labels = doc["metadata"].get("labels", {})
                name = (doc["kind"], doc["metadata"]["name"])
                components[name] = labels.get("app.kubernetes.io/component")
    return components


def _component(resource: str, components: Components) -> str | None:
    kind, _namespace, name = resource.split(".", 2)
    if (kind, name) in components:
        return components[kind, name]
    # a graph check's Pod, named by its pod template's labels
    by_label = re.search(r"app\.kubernetes\.io/component-([^.]+)", resource)
    return by_label[1] if by_label else None


@pytest.fixture(scope="session")
def checkov_scan(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Scan:
    given = os.environ.get("HERD_CHECKOV")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    cache_dir = cache.mkdir("checkov") if cache else tmp_path_factory.mktemp("checkov")
    checkov = Path(given) if given else _checkov_venv(cache_dir)
    out = tmp_path_factory.mktemp("checkov-renders")
    components = {profile: _render(profile, out / profile) for profile in PROFILES}
    started = time.monotonic()
    result = subprocess.run(
        [str(checkov), "-d", str(out), "--framework", "kubernetes", "-o", "json", *FLAGS],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    assert result.returncode in (0, 1), f"checkov failed to run:\n{result.stderr[-4000:]}"
    reports = json.loads(result.stdout)
    failed: list[Finding] = []
    summary: collections.Counter[str] = collections.Counter()
    for report in reports if isinstance(reports, list) else [reports]:
        for key in ("passed", "failed", "parsing_errors", "resource_count"):
            summary[key] += report.get("summary", {}).get(key, 0)
        for check in report.get("results", {}).get("failed_checks", []):
            profile = Path(check["file_path"]).parts[1]
            resource = check["resource"]
            failed.append(
                Finding(
                    profile,
                    check["check_id"],
                    check["check_name"],
                    resource,
                    check["file_path"],
                    _component(resource, components[profile]),
                )
            )
    return Scan(failed=tuple(failed), summary=dict(summary), seconds=seconds)


def _allowed_here(finding: Finding) -> bool:
    """ALLOWED's entries, narrowed to the profiles whose values call for them."""
    values = merged_values(finding.profile)
    if finding.check_id == "CKV_K8S_22":
        return bool(values["worker"]["gpu"]["enabled"])
    if finding.check_id == "CKV2_K8S_6" and finding.component is not None:
        return not values[finding.component]["networkPolicy"]["enabled"]
    return True


@pytest.mark.timeout(900)  # the first run creates the venv (about a minute)
def test_checkov_scans_every_profile(checkov_scan: Scan) -> None:
    assert checkov_scan.summary["parsing_errors"] == 0
    assert checkov_scan.summary["resource_count"] > 0
    assert checkov_scan.summary["passed"] > 0
    assert {finding.profile for finding in checkov_scan.failed} <= set(PROFILES)
    # one run over all the profiles: seconds, not minutes
    assert checkov_scan.seconds < 60, f"checkov took {checkov_scan.seconds:.0f} s"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("profile", PROFILES)
def test_checkov_finds_nothing_unexplained(checkov_scan: Scan, profile: str) -> None:
    unexplained = [
        f"{f.check_id} {f.check_name}: {f.resource} ({f.file})"
        for f in checkov_scan.failed
        if f.profile == profile
        and f.check_id not in SKIPPED
        and not (f.key in ALLOWED and _allowed_here(f))
    ]
    assert not unexplained, "fix these in the chart, or list them with a reason:\n" + "\n".join(
        unexplained
    )


@pytest.mark.timeout(900)
def test_every_exception_is_still_needed(checkov_scan: Scan) -> None:
    """A check that no longer fails anywhere comes off the lists."""
    assert not set(SKIPPED) - {f.check_id for f in checkov_scan.failed}, "skipped, yet passing"
    assert not set(ALLOWED) - {f.key for f in checkov_scan.failed}, "allowed, yet passing"
    assert all(reason.strip() for reason in [*SKIPPED.values(), *ALLOWED.values()])


#: Checks that must run and pass on every workload: never skipped, never allowed.
SECURITY_CHECKS = {
    "CKV_K8S_8": "liveness probe",
    "CKV_K8S_9": "readiness probe",
    "CKV_K8S_10": "CPU requests",
    "CKV_K8S_12": "memory requests",
    "CKV_K8S_13": "memory limits",
    "CKV_K8S_14": "image tag fixed",
    "CKV_K8S_16": "privileged",
    "CKV_K8S_17": "host PID",
    "CKV_K8S_18": "host IPC",
    "CKV_K8S_19": "host network",
    "CKV_K8S_20": "allowPrivilegeEscalation",
    "CKV_K8S_23": "root containers",
    "CKV_K8S_25": "added capabilities",
    "CKV_K8S_26": "hostPort",
    "CKV_K8S_28": "NET_RAW",
    "CKV_K8S_29": "pod securityContext",
    "CKV_K8S_30": "container securityContext",
    "CKV_K8S_31": "seccomp profile",
    "CKV_K8S_37": "capabilities",
    "CKV_K8S_38": "service account tokens",
    "CKV_K8S_39": "CAP_SYS_ADMIN",
    "CKV_K8S_40": "high uid",
    "CKV2_K8S_5": "no service account reads all secrets",
}


def test_security_checks_are_never_excepted() -> None:
    assert not set(SECURITY_CHECKS) & set(SKIPPED)
    assert not set(SECURITY_CHECKS) & {check for check, _, _ in ALLOWED}


@pytest.mark.parametrize("profile", PROFILES)
def test_only_herds_own_settings_are_secret_env_vars(profile: str) -> None:
    """Secrets in env vars (CKV_K8S_35): SECRET_ENV at most; Redis passwords are files."""
    rendered = render_profile(profile)
    for kind in ("Deployment", "StatefulSet"):
        for workload in rendered.of_kind(kind):
            for ctr in pod_spec(workload)["containers"]:
                secret_env = {
                    name
                    for name, entry in env_entries(ctr).items()
                    if "secretKeyRef" in entry.get("valueFrom", {})
                }
                assert secret_env <= SECRET_ENV, workload["metadata"]["name"]
    if rendered.of_kind("StatefulSet"):
        redis = container(rendered.component("StatefulSet", "redis"))
        assert "env" not in redis, "Redis reads its password from a mounted file"


def test_only_inline_api_keys_are_a_secret_env_var() -> None:
    """Every secret the values can supply at once: only api.auth.keys becomes an env var."""
    rendered = render(
        {
            "api": {"auth": {"keys": ["app:k3y-value"], "existingSecret": "team-keys"}},
            "redis": {"enabled": False},
            "externalRedis": {
                "existingSecret": "redis",
                "sentinel": {"addresses": ["s-0:26379"], "existingSecret": "redis"},
            },
        }
    )
    for kind in ("Deployment", "StatefulSet"):
        for workload in rendered.of_kind(kind):
            for ctr in pod_spec(workload)["containers"]:
                secret_env = {
                    name
                    for name, entry in env_entries(ctr).items()
                    if "secretKeyRef" in entry.get("valueFrom", {})
                }
                expected = SECRET_ENV if workload["metadata"]["name"] == "herd-api" else set()
                assert secret_env == expected, workload["metadata"]["name"]
