"""NetworkPolicies: each selects the pods it means, names ports those pods declare, and admits
exactly the peers the chart promises (the ingress controller, Prometheus, Herd's own pods, KEDA,
DNS and Redis), nothing else."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from .chart import (
    PROFILES,
    Obj,
    Rendered,
    container,
    container_port,
    merged_values,
    pod_labels,
    profile_values,
    render,
    render_profile,
    selects,
)

POLICIES_ON: dict[str, Any] = {
    "api": {"networkPolicy": {"enabled": True}},
    "worker": {"networkPolicy": {"enabled": True}},
}


def _workloads(rendered: Rendered) -> list[Obj]:
    return rendered.of_kind("Deployment") + rendered.of_kind("StatefulSet")


def _target(rendered: Rendered, policy: Obj) -> Obj:
    """The one workload whose pods the policy applies to."""
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector, "an empty podSelector fences every pod of the namespace"
    [workload] = [w for w in _workloads(rendered) if selects(selector, pod_labels(w))]
    return workload


def _namespace_peer(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def _admits(peers: list[Obj], labels: dict[str, str]) -> bool:
    """Whether a pod of the release's namespace with ``labels`` matches one of ``peers``."""
    return any(
        set(peer) == {"podSelector"} and selects(peer["podSelector"]["matchLabels"], labels)
        for peer in peers
    )


def _component(workload: Obj) -> str:
    component: str = workload["metadata"]["labels"]["app.kubernetes.io/component"]
    return component


@pytest.mark.parametrize("profile", PROFILES)
def test_policies_select_one_workload_and_name_its_ports(profile: str) -> None:
    rendered = render_profile(profile)
    for policy in rendered.of_kind("NetworkPolicy"):
        workload = _target(rendered, policy)
        assert policy["metadata"]["name"] == workload["metadata"]["name"]
        for rule in policy["spec"].get("ingress") or []:
            for port in rule["ports"]:
                assert isinstance(port["port"], str), "ingress ports are named"
                assert container_port(container(workload), port["port"])
        assert set(policy["spec"]["policyTypes"]) <= {"Ingress", "Egress"}


def test_production_fences_every_component() -> None:
    rendered = render_profile("production-like")
    fenced = {_component(_target(rendered, p)) for p in rendered.of_kind("NetworkPolicy")}
    assert fenced == {_component(w) for w in _workloads(rendered)} == {"api", "worker", "redis"}


def test_api_and_worker_policies_are_off_by_default() -> None:
    rendered = render_profile("default")
    assert [_component(_target(rendered, p)) for p in rendered.of_kind("NetworkPolicy")] == [
        "redis"
    ]


def _policy(rendered: Rendered, component: str) -> Obj:
    return rendered.component("NetworkPolicy", component)


def test_api_admits_its_ingress_controller_prometheus_and_extra_peers_only() -> None:
    rendered = render_profile("production-like")
    values = merged_values("production-like")
    policy = _policy(rendered, "api")
    api = rendered.component("Deployment", "api")
    [rule] = policy["spec"]["ingress"]
    assert [container_port(container(api), p["port"]) for p in rule["ports"]] == [11434]
    ingress = {
        **_namespace_peer(values["api"]["networkPolicy"]["ingressNamespace"]),
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
    }
    prometheus = {
        **_namespace_peer(values["networkPolicy"]["monitoringNamespace"]),
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert rule["from"] == [ingress, prometheus, *values["api"]["networkPolicy"]["extraFrom"]]
    # the Ingress and the ServiceMonitor reach the API through that one admitted port
    [service] = [s for s in rendered.of_kind("Service") if _component(s) == "api"]
    [service_port] = service["spec"]["ports"]
    assert container_port(container(api), service_port["targetPort"]) == 11434
    [monitor] = rendered.of_kind("ServiceMonitor")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {p["port"] for p in rule["ports"]}


def test_workers_admit_only_prometheus_on_their_health_port() -> None:
    rendered = render_profile("production-like")
    worker = rendered.component("Deployment", "worker")
    [rule] = _policy(rendered, "worker")["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["health"]
    assert container_port(container(worker), "health") == 11435
    assert [set(peer) for peer in rule["from"]] == [{"namespaceSelector", "podSelector"}]
    [monitor] = rendered.of_kind("PodMonitor")
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["health"]


def test_workers_admit_nothing_without_a_monitoring_namespace() -> None:
    values = {**POLICIES_ON, "networkPolicy": {"monitoringNamespace": ""}}
    rendered = render(values)
    assert _policy(rendered, "worker")["spec"]["ingress"] == []
    [rule] = _policy(rendered, "api")["spec"]["ingress"]
    assert len(rule["from"]) == 1, "the ingress controller only"


def _egress(rendered: Rendered, component: str) -> list[Obj]:
    rules: list[Obj] = _policy(rendered, component)["spec"]["egress"]
    return rules


@pytest.mark.parametrize("component", ["api", "worker"])
def test_herd_pods_reach_the_bundled_redis_and_dns_only(component: str) -> None:
    rendered = render(POLICIES_ON)
    redis_rule, dns_rule, *registries = _egress(rendered, component)
    assert len(registries) == (component == "worker"), "workers also reach model registries"
    redis = rendered.component("StatefulSet", "redis")
    [peer] = redis_rule["to"]
    assert selects(peer["podSelector"]["matchLabels"], pod_labels(redis))
    assert [container_port(container(redis), p["port"]) for p in redis_rule["ports"]] == [6379]
    assert {(p["port"], p["protocol"]) for p in dns_rule["ports"]} == {(53, "UDP"), (53, "TCP")}
    dns_peer = dns_rule["to"][0]
    assert dns_peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    # and the Redis policy lets this component in
    [redis_ingress] = _policy(rendered, "redis")["spec"]["ingress"]
    workload = rendered.component("Deployment", component)
    assert _admits(redis_ingress["from"], pod_labels(workload))


def test_an_external_redis_is_reached_on_its_urls_port() -> None:
    values = {**profile_values("external-redis"), **POLICIES_ON}
    rendered = render(values)
    port = urlsplit(values["externalRedis"]["url"]).port
    for component in ("api", "worker"):
        redis_rule = _egress(rendered, component)[0]
        assert "to" not in redis_rule, "any address: a NetworkPolicy cannot name a host"
        assert redis_rule["ports"] == [{"port": port, "protocol": "TCP"}]
    without_port = {**values, "externalRedis": {"url": "redis://redis.example.internal/0"}}
    redis_rule = _egress(render(without_port), "worker")[0]
    assert redis_rule["ports"] == [{"port": 6379, "protocol": "TCP"}]


def test_worker_extra_egress_comes_after_the_registries() -> None:
    rendered = render_profile("production-like")
    values = merged_values("production-like")
    rules = _egress(rendered, "worker")
    extra = values["worker"]["networkPolicy"]["extraEgress"]
    assert extra and rules[-len(extra) :] == extra
    assert len(rules) == 3 + len(extra), "Redis, DNS, registries, then the extra rules"
    assert len(_egress(rendered, "api")) == 2, "the API reaches Redis and DNS only"


PRIVATE_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}


def test_workers_pull_from_public_registries_over_https_only() -> None:
    rules = _egress(render(POLICIES_ON), "worker")
    [registries] = [rule for rule in rules if any("ipBlock" in peer for peer in rule.get("to", []))]
    assert registries["ports"] == [{"port": 443, "protocol": "TCP"}]
    blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"]["except"]) for peer in registries["to"]}
    assert set(blocks) == {"0.0.0.0/0", "::/0"}
    assert blocks["0.0.0.0/0"] >= PRIVATE_RANGES, "never the cluster's own addresses"
    assert blocks["::/0"] >= {"fc00::/7", "fe80::/10"}
    closed = {
        **POLICIES_ON,
        "worker": {"networkPolicy": {"enabled": True, "allowRegistryEgress": False}},
    }
    assert len(_egress(render(closed), "worker")) == 2, "Redis and DNS only"


def test_sentinels_and_every_redis_node_are_reached() -> None:
    rendered = render_profile("sentinel")
    sentinel = merged_values("sentinel")["externalRedis"]["sentinel"]
    sentinel_ports = {int(a.rpartition(":")[2]) for a in sentinel["addresses"]}
    for component in ("api", "worker"):
        redis_rule = _egress(rendered, component)[0]
        assert "to" not in redis_rule, "any address: the master moves between nodes"
        ports = [(p["port"], p["protocol"]) for p in redis_rule["ports"]]
        assert ports == [(port, "TCP") for port in [*sorted(sentinel_ports), sentinel["dataPort"]]]
    # ports appear once, and the data port is the value's
    values = {
        **profile_values("sentinel"),
        "externalRedis": {
            "sentinel": {"addresses": ["a:26379", "b:26380", "c:26379"], "dataPort": 6380}
        },
    }
    redis_rule = _egress(render(values), "api")[0]
    assert [p["port"] for p in redis_rule["ports"]] == [26379, 26380, 6380]


def test_redis_admits_herd_and_keda_only() -> None:
    rendered = render_profile("production-like")
    values = merged_values("production-like")
    [rule] = _policy(rendered, "redis")["spec"]["ingress"]
    redis = rendered.component("StatefulSet", "redis")
    assert [container_port(container(redis), p["port"]) for p in rule["ports"]] == [6379]
    herd = [rendered.component("Deployment", c) for c in ("api", "worker")]
    assert all(_admits(rule["from"], pod_labels(w)) for w in herd)
    assert not _admits(rule["from"], {**pod_labels(herd[0]), "app.kubernetes.io/component": "x"})
    namespaces = [p for p in rule["from"] if "namespaceSelector" in p]
    assert namespaces == [_namespace_peer(values["worker"]["keda"]["operatorNamespace"])]
    assert len(rule["from"]) == 3
