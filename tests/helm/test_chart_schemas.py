"""Every rendered object is valid Kubernetes, checked offline against the API's JSON schemas.

kubernetes-validate ships the schemas of each Kubernetes release. The strict variants reject unknown
fields, so a misspelt key (``initialDelaySecond``) fails here rather than being dropped silently by
the API server. Objects are checked against the oldest Kubernetes the chart supports
(Chart.yaml's kubeVersion) and the newest one the schemas know. CRD kinds (KEDA, Prometheus
Operator) have no built-in schema; their required fields are checked by hand.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .chart import CHART_DIR, CRD_KINDS, PROFILES, Obj, render_profile

OLDEST = "1.25"
NEWEST = kubernetes_validate.latest_version()


def test_oldest_version_is_the_charts_minimum() -> None:
    metadata = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert metadata["kubeVersion"] == f">={OLDEST}.0-0"


def _unique_builtin_docs() -> list[tuple[str, Obj]]:
    seen: set[str] = set()
    unique: list[tuple[str, Obj]] = []
    for profile in PROFILES:
        for doc in render_profile(profile).docs:
            if doc["kind"] in CRD_KINDS:
                continue
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                unique.append((f"{profile}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return unique


UNIQUE_DOCS = _unique_builtin_docs()


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_builtin_kinds_match_the_kubernetes_schemas(version: str) -> None:
    errors: list[str] = []
    for label, doc in UNIQUE_DOCS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(part) for part in error.path)
            errors.append(f"{label}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{label}: {error.message}")
    assert errors == []


def test_the_validator_catches_a_misspelt_field() -> None:
    deployment = next(doc for _, doc in UNIQUE_DOCS if doc["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, NEWEST, strict=True)


def test_every_builtin_kind_is_covered() -> None:
    kinds = {doc["kind"] for _, doc in UNIQUE_DOCS}
    assert kinds >= {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    }


def _crds() -> list[tuple[str, Obj]]:
    return [
        (f"{profile}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for profile in PROFILES
        for doc in render_profile(profile).docs
        if doc["kind"] in CRD_KINDS
    ]


CRD_API_VERSIONS = {
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}


def _require(doc: Obj, *path: str) -> Any:
    node: Any = doc
    for part in path:
        assert isinstance(node, dict) and part in node, f"missing {'.'.join(path)}"
        node = node[part]
    assert node not in (None, "", [], {}), f"empty {'.'.join(path)}"
    return node


@pytest.mark.parametrize(("label", "doc"), _crds(), ids=[label for label, _ in _crds()])
def test_crd_objects_have_their_required_fields(label: str, doc: Obj) -> None:
    assert doc["apiVersion"] == CRD_API_VERSIONS[doc["kind"]]
    _require(doc, "metadata", "name")
    if doc["kind"] == "ScaledObject":
        target = _require(doc, "spec", "scaleTargetRef")
        assert target["kind"] == "Deployment" and target["name"]
        for trigger in _require(doc, "spec", "triggers"):
            metadata = trigger["metadata"]
            # KEDA reads trigger metadata as strings only.
            assert all(isinstance(value, str) for value in metadata.values()), metadata
            if trigger["type"] == "redis-sentinel-streams":
                assert metadata["addresses"] and metadata["sentinelMaster"]
            else:
                assert trigger["type"] == "redis-streams"
                assert metadata["address"]
            assert metadata["stream"]
            assert sum(key in metadata for key in ("lagCount", "pendingEntriesCount")) == 1
        assert int(doc["spec"]["minReplicaCount"]) <= int(doc["spec"]["maxReplicaCount"])
    elif doc["kind"] == "TriggerAuthentication":
        for ref in _require(doc, "spec", "secretTargetRef"):
            assert ref["parameter"] in {"password", "sentinelPassword"}
            assert ref["name"] and ref["key"]
    elif doc["kind"] == "PrometheusRule":
        for group in _require(doc, "spec", "groups"):
            assert group["name"]
            for rule in group["rules"]:
                assert rule["alert"] and rule["expr"]
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
                assert all(isinstance(v, str) for v in rule["annotations"].values())
    else:
        _require(doc, "spec", "selector", "matchLabels")
        field = "endpoints" if doc["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
        for endpoint in _require(doc, "spec", field):
            assert endpoint["port"] and endpoint["path"].startswith("/")
            for relabeling in endpoint.get("relabelings", []):
                assert relabeling["targetLabel"] and relabeling["action"] == "replace"


def test_crds_are_rendered_only_where_enabled() -> None:
    assert not CRD_KINDS & render_profile("default").kinds()
    assert {"ScaledObject", "TriggerAuthentication"} <= render_profile("keda").kinds()
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= render_profile(
        "production-like"
    ).kinds()
