"""The chart's objects point at each other correctly, and at settings that Herd really reads.

Selectors match pod labels, Services and probes name ports that containers declare, every HERD_*
variable is a field of ``shared.settings.Settings`` with a value it accepts, and secrets travel only
by reference.
"""

from __future__ import annotations

import os

import pytest

from shared.hostaddr import parse_host
from shared.settings import Settings

from .chart import (
    PROFILES,
    Obj,
    Rendered,
    container,
    container_port,
    env_entries,
    env_secret_file,
    merged_values,
    pod_labels,
    pod_spec,
    render_profile,
    secret_file,
    selects,
)

WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def _workloads(rendered: Rendered) -> list[Obj]:
    return [doc for kind in WORKLOAD_KINDS for doc in rendered.of_kind(kind)]


def _selected(rendered: Rendered, selector: dict[str, str]) -> list[Obj]:
    assert selector, "an empty selector selects everything"
    return [w for w in _workloads(rendered) if selects(selector, pod_labels(w))]


def _herd_containers(rendered: Rendered) -> list[tuple[str, Obj]]:
    return [
        (component, container(rendered.component("Deployment", component)))
        for component in ("api", "worker")
    ]


@pytest.mark.parametrize("profile", PROFILES)
def test_workload_selectors_match_their_pods_only(profile: str) -> None:
    rendered = render_profile(profile)
    user_labels = set(merged_values(profile)["commonLabels"])
    for workload in _workloads(rendered):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert _selected(rendered, selector) == [workload]
        assert not user_labels & set(selector), "user labels must stay out of immutable selectors"
        assert "app.kubernetes.io/version" not in selector


@pytest.mark.parametrize("profile", PROFILES)
def test_services_reach_named_container_ports(profile: str) -> None:
    rendered = render_profile(profile)
    for service in rendered.of_kind("Service"):
        [workload] = _selected(rendered, service["spec"]["selector"])
        ctr = container(workload)
        for port in service["spec"]["ports"]:
            assert isinstance(port["targetPort"], str), "target ports are named, not numbered"
            assert container_port(ctr, port["targetPort"])
            assert port["name"] == port["targetPort"]


@pytest.mark.parametrize("profile", PROFILES)
def test_budgets_and_scalers_target_rendered_workloads(profile: str) -> None:
    rendered = render_profile(profile)
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert len(_selected(rendered, pdb["spec"]["selector"]["matchLabels"])) == 1
    for scaler in rendered.of_kind("HorizontalPodAutoscaler") + rendered.of_kind("ScaledObject"):
        target = scaler["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        deployment = rendered.get("Deployment", target["name"])
        assert "replicas" not in deployment["spec"], "the scaler, not the chart, owns replicas"
    scaled = {doc["spec"]["scaleTargetRef"]["name"] for doc in rendered.of_kind("ScaledObject")}
    assert scaled <= {rendered.component("Deployment", "worker")["metadata"]["name"]}


@pytest.mark.parametrize("profile", PROFILES)
def test_budgets_leave_room_for_node_drains(profile: str) -> None:
    rendered = render_profile(profile)
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        [workload] = _selected(rendered, pdb["spec"]["selector"]["matchLabels"])
        scaler = [
            s
            for s in rendered.of_kind("HorizontalPodAutoscaler") + rendered.of_kind("ScaledObject")
            if s["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
        ]
        fewest = (
            workload["spec"]["replicas"]
            if not scaler
            else scaler[0]["spec"].get("minReplicas", scaler[0]["spec"].get("minReplicaCount"))
        )
        if "minAvailable" in pdb["spec"]:
            assert pdb["spec"]["minAvailable"] < fewest, "an eviction could never proceed"
        else:
            assert pdb["spec"]["maxUnavailable"] >= 1


@pytest.mark.parametrize("profile", PROFILES)
def test_ingress_and_service_monitor_use_the_api_service(profile: str) -> None:
    rendered = render_profile(profile)
    api_service = rendered.component("Service", "api")
    port_names = {port["name"] for port in api_service["spec"]["ports"]}
    for ingress in rendered.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == api_service["metadata"]["name"]
                assert backend["port"]["name"] in port_names
    for monitor in rendered.of_kind("ServiceMonitor"):
        assert selects(
            monitor["spec"]["selector"]["matchLabels"], api_service["metadata"]["labels"]
        )
        assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= port_names


def _probe_target(ctr: Obj, probe: str) -> tuple[str, int]:
    http_get = ctr[probe]["httpGet"]
    return http_get["path"], container_port(ctr, http_get["port"])


@pytest.mark.parametrize("profile", PROFILES)
def test_api_probes_hit_the_port_herd_host_binds(profile: str) -> None:
    api = container(render_profile(profile).component("Deployment", "api"))
    bound = parse_host(env_entries(api)["HERD_HOST"]["value"])
    assert bound.host == "0.0.0.0"
    assert _probe_target(api, "readinessProbe") == ("/readyz", bound.port)
    assert _probe_target(api, "livenessProbe") == ("/healthz", bound.port)
    assert "startupProbe" not in api


@pytest.mark.parametrize("profile", PROFILES)
def test_worker_probes_hit_the_worker_health_address(profile: str) -> None:
    worker = container(render_profile(profile).component("Deployment", "worker"))
    bound = parse_host(env_entries(worker)["HERD_WORKER_HEALTH_ADDR"]["value"])
    assert bound.host == "0.0.0.0"
    assert _probe_target(worker, "startupProbe") == ("/readyz", bound.port)
    assert _probe_target(worker, "readinessProbe") == ("/readyz", bound.port)
    assert _probe_target(worker, "livenessProbe") == ("/healthz", bound.port)
    startup = worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "minutes to load models"


@pytest.mark.parametrize("profile", PROFILES)
def test_herd_env_vars_are_settings_fields(profile: str) -> None:
    for component, ctr in _herd_containers(render_profile(profile)):
        names = [entry["name"] for entry in ctr["env"] if entry["name"].startswith("HERD_")]
        unknown = [n for n in names if n.removeprefix("HERD_").lower() not in Settings.model_fields]
        assert unknown == [], f"{component} sets variables Settings ignores"
        assert len(names) >= 8
        all_names = [entry["name"] for entry in ctr["env"]]
        assert len(all_names) == len(set(all_names)), "a repeated name hides the first value"


@pytest.mark.parametrize("profile", PROFILES)
def test_settings_accept_the_rendered_values(profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("HERD_")]:
        monkeypatch.delenv(name)
    for component, ctr in _herd_containers(render_profile(profile)):
        with monkeypatch.context() as env:
            for entry in env_entries(ctr).values():
                env.setenv(entry["name"], entry.get("value", f"from-{component}-ref"))
            settings = Settings()
        values = merged_values(profile)
        assert settings.log_format == values["config"]["logFormat"]
        if values["redis"]["enabled"] or not values["externalRedis"]["sentinel"]["addresses"]:
            assert settings.redis_url
            assert settings.redis_url.startswith(("redis://", "rediss://"))
        else:
            # Sentinels name the master: no URL
            sentinel = values["externalRedis"]["sentinel"]
            assert settings.redis_url is None
            assert settings.redis_sentinels == sentinel["addresses"]
            assert settings.redis_sentinel_master == sentinel["masterName"]
        if component == "worker":
            assert str(settings.models_dir) == values["models"]["dir"]
            assert settings.num_parallel == values["worker"]["numParallel"]
            assert settings.shutdown_grace_s == values["worker"]["shutdownGraceSeconds"]
            assert settings.max_loaded_models == values["worker"]["maxLoadedModels"]
        else:
            assert settings.host.port == values["api"]["port"]
            assert settings.shutdown_grace_s == values["api"]["shutdownGraceSeconds"]
            assert settings.max_body_bytes == values["api"]["maxBodyBytes"]
            assert settings.origins == values["api"]["origins"]


@pytest.mark.parametrize("profile", PROFILES)
def test_worker_id_is_the_pod_name(profile: str) -> None:
    worker = container(render_profile(profile).component("Deployment", "worker"))
    field = env_entries(worker)["HERD_WORKER_ID"]["valueFrom"]["fieldRef"]
    assert field["fieldPath"] == "metadata.name"


SENSITIVE = ("PASSWORD", "SECRET", "TOKEN", "API_KEY", "REDISCLI_AUTH")


@pytest.mark.parametrize("profile", PROFILES)
def test_secrets_are_referenced_never_inlined(profile: str) -> None:
    rendered = render_profile(profile)
    values = merged_values(profile)
    secret_values = [
        rendered.secret_value(secret["metadata"]["name"], key)
        for secret in rendered.of_kind("Secret")
        for key in secret.get("data", {})
    ]
    existing = {
        values["redis"]["auth"]["existingSecret"],
        values["externalRedis"]["existingSecret"],
        values["externalRedis"]["sentinel"]["existingSecret"],
    }
    for workload in _workloads(rendered):
        for ctr in pod_spec(workload)["containers"]:
            for entry in ctr.get("env", []):
                if "value" in entry and entry["name"].endswith("_FILE"):
                    # a path, to a file of a mounted Secret
                    assert secret_file(workload, ctr, entry["value"]) is not None, entry["name"]
                elif "value" in entry:
                    assert not any(s in str(entry["value"]) for s in secret_values), entry["name"]
                    assert not any(word in entry["name"] for word in SENSITIVE), entry["name"]
                if "secretKeyRef" not in entry.get("valueFrom", {}):
                    continue
                ref = entry["valueFrom"]["secretKeyRef"]
                secret = rendered.find("Secret", ref["name"])
                if secret is None:
                    assert ref["name"] in existing - {""}, (
                        f"{ref['name']} is neither rendered nor given"
                    )
                else:
                    assert ref["key"] in secret["data"]
            assert "envFrom" not in ctr


@pytest.mark.parametrize("profile", PROFILES)
def test_api_and_workers_share_one_redis_and_its_password(profile: str) -> None:
    rendered = render_profile(profile)
    api, worker = (rendered.component("Deployment", c) for c in ("api", "worker"))
    names = ("URL", "PASSWORD_FILE", "SENTINELS", "SENTINEL_MASTER", "SENTINEL_PASSWORD_FILE")
    for name in (f"HERD_REDIS_{name}" for name in names):
        assert env_entries(container(api)).get(name) == env_entries(container(worker)).get(name)
    for name in ("HERD_REDIS_PASSWORD_FILE", "HERD_REDIS_SENTINEL_PASSWORD_FILE"):
        # the same key of the same Secret, as a file of each pod
        assert env_secret_file(api, name) == env_secret_file(worker, name)
    for workload in (api, worker):
        env = env_entries(container(workload))
        assert "HERD_REDIS_PASSWORD" not in env and "HERD_REDIS_SENTINEL_PASSWORD" not in env
    if "HERD_REDIS_SENTINELS" in env_entries(container(api)):
        assert "HERD_REDIS_URL" not in env_entries(container(api))
        return
    url = env_entries(container(api))["HERD_REDIS_URL"]["value"]
    assert "@" not in url, "no credentials in the URL"
    if rendered.of_kind("StatefulSet"):
        statefulset = rendered.component("StatefulSet", "redis")
        password_ref = env_secret_file(api, "HERD_REDIS_PASSWORD_FILE")
        # Redis reads the same key of the same Secret, as a file (no secret in its env)
        assert password_ref is not None
        assert secret_file(statefulset, container(statefulset), "/etc/redis-auth/password") == (
            password_ref
        )
        assert "env" not in container(statefulset)
        service = rendered.get(
            "Service", rendered.component("StatefulSet", "redis")["metadata"]["name"]
        )
        [port] = service["spec"]["ports"]
        assert url == f"redis://{service['metadata']['name']}:{port['port']}/0"
