"""The chart lints, renders for every profile in helm/ci, and refuses values that cannot work."""

from __future__ import annotations

import tomllib
from typing import Any

import helm_python as helm
import pytest
import yaml

from .chart import (
    CHART_DIR,
    CI_DIR,
    PROFILES,
    REPO_ROOT,
    chart,
    profile_values,
    render,
    render_profile,
)

EXPECTED_PROFILES = {
    "default",
    "gpu",
    "cpu-only",
    "external-redis",
    "sentinel",
    "keda",
    "production-like",
}
LINT_WARNING = 2


def test_every_profile_is_there() -> None:
    assert set(PROFILES) >= EXPECTED_PROFILES


def test_chart_and_app_version_are_the_package_version() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    metadata = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    version = pyproject["project"]["version"]
    assert metadata["version"] == version
    assert metadata["appVersion"] == version
    assert chart().version == version


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_is_clean(profile: str) -> None:
    report = helm.lint(
        CHART_DIR, profile_values(profile), strict=True, namespace="llm", kube_version="v1.25.0"
    )
    findings = [m for m in report["messages"] if m["severity"] >= LINT_WARNING]
    assert report["errors"] == [] and findings == [], report


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_satisfies_the_schema_and_renders(profile: str) -> None:
    chart().validate_schema(profile_values(profile))
    rendered = render_profile(profile)
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= rendered.kinds()
    assert "Herd 0.1.0 is installed" in rendered.notes
    for doc in rendered.docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert len(doc["metadata"]["name"]) <= 63


def test_ci_files_are_only_value_files() -> None:
    assert {p.suffix for p in CI_DIR.iterdir()} == {".yaml"}


@pytest.mark.parametrize(
    "values",
    [
        {"api": {"replicas": 3}},
        {"worker": {"gpu": {"enabled": "yes"}}},
        {"models": {"storage": {"type": "nfs"}}},
        {"externalRedis": {"url": "http://redis:6379"}},
        {"externalRedis": {"url": "rediss://:s3cret@redis:6380/0"}},
        {"config": {"logLevel": "verbose"}},
        {"api": {"service": {"type": "ExternalName"}}},
        {"externalRedis": {"sentinel": {"addresses": ["sentinel-0"]}}},
        {"externalRedis": {"sentinel": {"addresses": ["a:26379,b:26379"]}}},
        {"externalRedis": {"sentinel": {"addresses": ["a:26379", "a:26379"]}}},
        {"externalRedis": {"sentinel": {"masterName": ""}}},
        {"externalRedis": {"sentinel": {"dataPort": 0}}},
    ],
    ids=[
        "typo",
        "type",
        "storage-type",
        "url-scheme",
        "password-in-url",
        "log-level",
        "service-type",
        "sentinel-no-port",
        "sentinels-in-one-item",
        "sentinel-twice",
        "sentinel-master-empty",
        "sentinel-data-port",
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart().validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"enabled": False}}, "or externalRedis.sentinel.addresses"),
        (
            {
                "redis": {"enabled": False},
                "externalRedis": {
                    "url": "redis://redis:6379/0",
                    "sentinel": {"addresses": ["sentinel:26379"]},
                },
            },
            "externalRedis.sentinel.addresses, not both",
        ),
        ({"models": {"storage": {"type": "existingClaim"}}}, "set models.storage.existingClaim"),
        ({"worker": {"keda": {"enabled": True, "models": []}}}, "at least one model"),
        (
            {"worker": {"keda": {"enabled": True, "minReplicaCount": 5, "maxReplicaCount": 2}}},
            "minReplicaCount must not exceed",
        ),
        (
            {"api": {"autoscaling": {"enabled": True, "minReplicas": 9, "maxReplicas": 3}}},
            "minReplicas must not exceed",
        ),
        ({"api": {"pdb": {"minAvailable": 1, "maxUnavailable": 1}}}, "not both"),
        ({"worker": {"pdb": {"minAvailable": "", "maxUnavailable": ""}}}, "set minAvailable or"),
        ({"config": {"heartbeatIntervalSeconds": 10, "heartbeatTtlSeconds": 5}}, "heartbeatTtl"),
    ],
    ids=[
        "no-redis",
        "url-and-sentinels",
        "no-claim",
        "keda-no-models",
        "keda-min-max",
        "hpa-min-max",
        "pdb-both",
        "pdb-neither",
        "heartbeat",
    ],
)
def test_validate_values_fails_with_one_clear_message(values: dict[str, Any], message: str) -> None:
    chart().validate_schema(values)  # the schema alone lets these through
    with pytest.raises(helm.HelmRenderError, match="VALUES VALIDATION") as failure:
        render(values)
    assert message in str(failure.value)


def test_several_problems_are_reported_together() -> None:
    values = {
        "redis": {"enabled": False},
        "models": {"storage": {"type": "existingClaim"}},
    }
    with pytest.raises(helm.HelmRenderError) as failure:
        render(values)
    assert "set externalRedis.url" in str(failure.value)
    assert "set models.storage.existingClaim" in str(failure.value)


@pytest.mark.parametrize(
    "values",
    [
        {"api": {"service": {"type": "LoadBalancer"}}},
        {"api": {"service": {"type": "NodePort"}}},
        {"api": {"ingress": {"enabled": True, "allowUnauthenticated": True}}},
    ],
    ids=["load-balancer", "node-port", "ingress"],
)
def test_notes_warn_when_the_api_is_exposed_without_keys(values: dict[str, Any]) -> None:
    assert "WARNING" in render(values).notes
    with_keys: dict[str, Any] = {
        **values,
        "api": {**values["api"], "auth": {"existingSecret": "k"}},
    }
    assert "WARNING" not in render(with_keys).notes


def test_notes_stay_quiet_for_an_internal_service() -> None:
    notes = render_profile("default").notes
    assert "WARNING" not in notes
    assert "port-forward service/herd-api 11434:11434" in notes
    assert "http://herd-api.llm.svc.cluster.local:11434" in notes


def test_generated_redis_password_is_random_and_strong() -> None:
    first = render().secret_value("herd-redis", "redis-password")
    second = render().secret_value("herd-redis", "redis-password")
    assert len(first) >= 32 and first.isalnum()
    assert first != second  # offline there is no Secret to look up: a fresh one each time


def test_a_given_redis_password_is_used() -> None:
    rendered = render({"redis": {"auth": {"password": "s3cret-Pass"}}})
    assert rendered.secret_value("herd-redis", "redis-password") == "s3cret-Pass"


def test_long_release_names_are_truncated_and_stay_distinct() -> None:
    manifests = chart().render({}, name="a" * 60, namespace="llm")
    keys = [
        (doc["kind"], doc["metadata"]["name"])
        for path, text in manifests.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if isinstance(doc, dict)
    ]
    assert len(keys) >= 10
    assert all(len(name) <= 63 for _, name in keys)
    assert len(set(keys)) == len(keys)
