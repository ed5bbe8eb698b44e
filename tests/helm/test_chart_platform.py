"""Platform defaults: no unauthenticated Ingress by accident, Redis' maxmemory under its limit,
no service links, API pods spread over nodes, GPU taints tolerated, bounded model scratch space,
and worker rollouts that never lower capacity."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from .chart import (
    PROFILES,
    Obj,
    container,
    merged_values,
    pod_labels,
    pod_spec,
    render,
    render_profile,
    selects,
)

GIB = 2**30
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


# --- an Ingress needs authentication -------------------------------------------------------


def test_an_ingress_without_keys_or_auth_annotation_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match="VALUES VALIDATION") as failure:
        render({"api": {"ingress": {"enabled": True}}})
    assert "api.ingress.allowUnauthenticated" in str(failure.value)


@pytest.mark.parametrize(
    "api",
    [
        {"auth": {"existingSecret": "team-keys"}},
        {"auth": {"keys": ["app:0123456789abcdef"]}},
        {"ingress": {"annotations": {"nginx.ingress.kubernetes.io/auth-url": "http://oauth2/"}}},
    ],
    ids=["existing-secret", "keys", "auth-annotation"],
)
def test_an_authenticated_ingress_renders(api: dict[str, Any]) -> None:
    values = {"api": {**api, "ingress": {"enabled": True, **api.get("ingress", {})}}}
    rendered = render(values)
    assert rendered.of_kind("Ingress")
    assert ("WARNING" in rendered.notes) == ("auth" not in api), "an annotation still warns"


def test_an_open_ingress_must_be_asked_for_and_is_warned_about() -> None:
    rendered = render({"api": {"ingress": {"enabled": True, "allowUnauthenticated": True}}})
    assert rendered.of_kind("Ingress")
    assert "WITHOUT API KEYS" in rendered.notes
    assert "api.ingress.allowUnauthenticated=true" in rendered.notes


# --- Redis' memory -----------------------------------------------------------------------


def _redis_conf(values: dict[str, Any]) -> list[str]:
    rendered = render(values)
    redis = rendered.component("StatefulSet", "redis")
    lines: list[str] = rendered.get("ConfigMap", redis["metadata"]["name"])["data"][
        "redis.conf"
    ].splitlines()
    return lines


def _maxmemory(lines: list[str]) -> str | None:
    found = [line.split()[1] for line in lines if line.startswith("maxmemory ")]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ("2Gi", 2 * GIB * 80 // 100),
        ("1536Mi", 1536 * 2**20 * 80 // 100),
        ("3G", 3 * 10**9 * 80 // 100),
        ("1.5Gi", int(1.5 * GIB) * 80 // 100),
        (4294967296, 4 * GIB * 80 // 100),
    ],
)
def test_redis_maxmemory_is_a_share_of_its_memory_limit(limit: Any, expected: int) -> None:
    lines = _redis_conf({"redis": {"resources": {"limits": {"memory": limit}}}})
    assert _maxmemory(lines) == str(expected)
    assert "maxmemory-policy noeviction" in lines and "appendonly yes" in lines


@pytest.mark.parametrize("profile", [p for p in PROFILES if merged_values(p)["redis"]["enabled"]])
def test_every_profiles_redis_stays_under_its_limit(profile: str) -> None:
    rendered = render_profile(profile)
    redis = rendered.component("StatefulSet", "redis")
    conf = rendered.get("ConfigMap", redis["metadata"]["name"])["data"]["redis.conf"].splitlines()
    limit = container(redis)["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    percent = merged_values(profile)["redis"]["maxmemoryPercent"]
    assert _maxmemory(conf) == str(int(limit.removesuffix("Gi")) * GIB * percent // 100)


def test_redis_maxmemory_can_be_given_or_left_out() -> None:
    given = _redis_conf({"redis": {"maxmemory": "3gb"}})
    assert _maxmemory(given) == "3gb"
    half = _redis_conf({"redis": {"maxmemoryPercent": 50}})
    assert _maxmemory(half) == str(GIB)
    unlimited = {"redis": {"resources": {"limits": None, "requests": {"memory": "1Gi"}}}}
    assert _maxmemory(_redis_conf(unlimited)) is None
    assert "no memory limit and no maxmemory" in render(unlimited).notes


def test_an_unreadable_memory_limit_fails_clearly() -> None:
    with pytest.raises(helm.HelmRenderError, match="cannot read the quantity"):
        render({"redis": {"resources": {"limits": {"memory": "2 gigs"}}}})


# --- pods ----------------------------------------------------------------------------------


def _workloads(profile: str) -> list[Obj]:
    rendered = render_profile(profile)
    return rendered.of_kind("Deployment") + rendered.of_kind("StatefulSet")


@pytest.mark.parametrize("profile", PROFILES)
def test_no_pod_gets_service_links(profile: str) -> None:
    # a Service named herd-api would otherwise inject HERD_API_PORT=tcp://… into every pod
    for workload in _workloads(profile):
        assert pod_spec(workload)["enableServiceLinks"] is False, workload["metadata"]["name"]


@pytest.mark.parametrize("profile", PROFILES)
def test_api_pods_spread_over_nodes(profile: str) -> None:
    rendered = render_profile(profile)
    api = rendered.component("Deployment", "api")
    constraints = pod_spec(api)["topologySpreadConstraints"]
    [by_node] = [c for c in constraints if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node["whenUnsatisfiable"] == "ScheduleAnyway" and by_node["maxSkew"] == 1
    assert selects(by_node["labelSelector"]["matchLabels"], pod_labels(api))
    worker = rendered.component("Deployment", "worker")
    assert not selects(by_node["labelSelector"]["matchLabels"], pod_labels(worker))
    given = merged_values(profile)["api"]["topologySpreadConstraints"]
    assert constraints[1:] == given


def test_api_spread_can_be_turned_off() -> None:
    api = render({"api": {"spreadAcrossNodes": False}}).component("Deployment", "api")
    assert "topologySpreadConstraints" not in pod_spec(api)


@pytest.mark.parametrize("profile", PROFILES)
def test_gpu_workers_tolerate_the_gpu_taint_once(profile: str) -> None:
    worker = render_profile(profile).component("Deployment", "worker")
    tolerations = pod_spec(worker).get("tolerations", [])
    if merged_values(profile)["worker"]["gpu"]["enabled"]:
        assert tolerations.count(GPU_TOLERATION) == 1
    else:
        assert GPU_TOLERATION not in tolerations


def test_gpu_tolerations_add_to_the_workers_own() -> None:
    mine = {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
    worker = render({"worker": {"tolerations": [mine]}}).component("Deployment", "worker")
    assert pod_spec(worker)["tolerations"] == [mine, GPU_TOLERATION]
    none = render({"worker": {"gpu": {"tolerations": []}}}).component("Deployment", "worker")
    assert "tolerations" not in pod_spec(none)


def _models_volume(worker: Obj) -> Obj:
    volumes: list[Obj] = pod_spec(worker)["volumes"]
    [volume] = [v for v in volumes if v["name"] == "models"]
    return volume


def test_the_models_emptydir_is_bounded_and_accounted_for() -> None:
    worker = render_profile("default").component("Deployment", "worker")
    values = merged_values("default")["models"]["storage"]
    assert _models_volume(worker)["emptyDir"]["sizeLimit"] == values["emptyDirSizeLimit"] == "20Gi"
    resources = container(worker)["resources"]
    assert resources["requests"]["ephemeral-storage"] == "20Gi"
    assert resources["limits"]["ephemeral-storage"] == f"{(20 + 2) * 1024}Mi", "size + headroom"


def test_ephemeral_storage_is_left_alone_when_set_or_not_needed() -> None:
    mine = {"requests": {"ephemeral-storage": "1Gi"}, "limits": {"ephemeral-storage": "50Gi"}}
    worker = render({"worker": {"resources": mine}}).component("Deployment", "worker")
    resources = container(worker)["resources"]
    assert resources["requests"]["ephemeral-storage"] == "1Gi"
    assert resources["limits"]["ephemeral-storage"] == "50Gi"
    for profile in ("gpu", "production-like"):  # models on a claim
        worker = render_profile(profile).component("Deployment", "worker")
        for section in ("requests", "limits"):
            assert "ephemeral-storage" not in container(worker)["resources"][section]


# --- worker rollouts -------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_worker_rollouts_surge_before_they_drain(profile: str) -> None:
    rendered = render_profile(profile)
    worker = rendered.component("Deployment", "worker")
    strategy = worker["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    # node drains still go one worker at a time, and never wait forever
    budget = rendered.component("PodDisruptionBudget", "worker")["spec"]
    assert budget.get("maxUnavailable") == 1 and "minAvailable" not in budget
    values = merged_values(profile)["worker"]
    assert (
        pod_spec(worker)["terminationGracePeriodSeconds"]
        == values["shutdownGraceSeconds"] + values["terminationGraceMarginSeconds"]
    )
