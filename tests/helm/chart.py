"""Render the Herd chart with Helm's own Go code (helm_python) and look things up in the result.

Rendering is offline: no cluster, no helm binary. Each profile in ``helm/ci`` is rendered once per
test session (``render_profile`` is cached); tests must treat the documents as read-only.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "herd"
CI_DIR = REPO_ROOT / "helm" / "ci"
PROFILES = sorted(path.stem for path in CI_DIR.glob("*.yaml"))
RELEASE = "herd"
NAMESPACE = "llm"

#: Kinds that are CustomResourceDefinitions of other projects: no built-in schema for them.
CRD_KINDS = frozenset(
    {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    """The documents of one rendering, and the text of NOTES.txt."""

    docs: tuple[Obj, ...]
    notes: str

    def kinds(self) -> set[str]:
        return {doc["kind"] for doc in self.docs}

    def of_kind(self, kind: str) -> list[Obj]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def find(self, kind: str, name: str) -> Obj | None:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        return found[0] if found else None

    def component(self, kind: str, component: str) -> Obj:
        """The one object of ``kind`` labelled ``app.kubernetes.io/component: <component>``."""
        found = [
            doc
            for doc in self.of_kind(kind)
            if doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} for {component}, found {len(found)}"
        return found[0]

    def secret_value(self, name: str, key: str) -> str:
        """A value of a Secret rendered by the chart (``data`` is base64, ``stringData`` is not)."""
        secret = self.get("Secret", name)
        if key in secret.get("stringData", {}):
            return str(secret["stringData"][key])
        return base64.b64decode(secret["data"][key]).decode()


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def profile_values(profile: str) -> Obj:
    values = yaml.safe_load((CI_DIR / f"{profile}.yaml").read_text())
    assert values is None or isinstance(values, dict), f"{profile}.yaml is not a mapping"
    return values or {}


def render(values: Obj | None = None) -> Rendered:
    """Render the chart as ``helm install herd ./helm/herd --namespace llm`` would."""
    manifests = chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[Obj] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                assert isinstance(doc, dict), f"{path} renders a non-object document"
                docs.append(doc)
    return Rendered(docs=tuple(docs), notes=notes)


@functools.cache
def render_profile(profile: str) -> Rendered:
    return render(profile_values(profile))


def merged_values(profile: str) -> Obj:
    """The chart's defaults coalesced with a profile: what the release would use."""
    return chart().merge_values(profile_values(profile))


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def container(workload: Obj, name: str | None = None) -> Obj:
    """The workload's container called ``name``, or its only container."""
    containers: list[Obj] = pod_spec(workload)["containers"]
    if name is None:
        assert len(containers) == 1, "expected a single container"
        return containers[0]
    matching = [c for c in containers if c["name"] == name]
    assert len(matching) == 1, f"no container {name}"
    return matching[0]


def env_entries(ctr: Obj) -> dict[str, Obj]:
    """A container's env entries by name; a name set twice keeps its last entry, as Kubernetes."""
    return {entry["name"]: entry for entry in ctr.get("env", [])}


def container_port(ctr: Obj, port: int | str) -> int:
    """Resolve a probe's or a Service's target port (a number or a name) in ``ctr``."""
    for declared in ctr.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    raise AssertionError(f"container {ctr['name']} declares no port {port!r}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def secret_file(workload: Obj, ctr: Obj, path: str) -> dict[str, str] | None:
    """``{"name", "key"}`` of the Secret key that is the file at ``path`` in ``ctr`` (through a
    ``secret`` or ``projected`` volume, mounted read-only without subPath); None if none is."""
    volumes = {volume["name"]: volume for volume in pod_spec(workload).get("volumes", [])}
    for mount in ctr.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix) or not mount.get("readOnly") or "subPath" in mount:
            continue
        volume = volumes[mount["name"]]
        if "secret" in volume:
            given = volume["secret"]
            sources = [{"secret": {"name": given["secretName"], "items": given.get("items")}}]
        else:
            sources = volume.get("projected", {}).get("sources", [])
        relative = path.removeprefix(prefix)
        for source in sources:
            if "secret" not in source:
                continue
            items = source["secret"].get("items") or [{"key": relative, "path": relative}]
            for item in items:
                if item["path"] == relative:
                    return {"name": source["secret"]["name"], "key": item["key"]}
    return None


def env_secret_file(workload: Obj, variable: str) -> dict[str, str] | None:
    """The Secret key behind a ``*_FILE`` variable of the workload's container (None: unset)."""
    ctr = container(workload)
    entry = env_entries(ctr).get(variable)
    if entry is None:
        return None
    found = secret_file(workload, ctr, entry["value"])
    assert found is not None, f"{variable}={entry['value']} is no file of a mounted Secret"
    return found
