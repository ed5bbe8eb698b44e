"""What the chart promises an operator: GPUs, security contexts, drains, KEDA, Redis and storage."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from shared.keys import JOB_GROUP, job_stream
from shared.names import normalize

from .chart import (
    NAMESPACE,
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
    profile_values,
    render,
    render_profile,
    selects,
)

GPU = "nvidia.com/gpu"


def _workloads(rendered: Rendered) -> list[Obj]:
    return rendered.of_kind("Deployment") + rendered.of_kind("StatefulSet")


def _env(rendered: Rendered, component: str, name: str) -> str:
    value = env_entries(container(rendered.component("Deployment", component)))[name]["value"]
    assert isinstance(value, str)
    return value


def test_gpu_profile_requests_gpus_on_gpu_nodes() -> None:
    rendered = render_profile("gpu")
    worker = rendered.component("Deployment", "worker")
    resources = container(worker)["resources"]
    assert resources["limits"][GPU] == 1 and resources["requests"][GPU] == 1
    spec = pod_spec(worker)
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert "nodeAffinity" in spec["affinity"]
    assert _env(rendered, "worker", "HERD_N_GPU_LAYERS") == "-1"
    assert container(worker)["image"].endswith(":0.1.0")


def test_cpu_only_profile_requests_no_gpu_anywhere() -> None:
    rendered = render_profile("cpu-only")
    for workload in _workloads(rendered):
        for ctr in pod_spec(workload)["containers"]:
            for section in ("requests", "limits"):
                assert not any("gpu" in name for name in ctr.get("resources", {}).get(section, {}))
        assert "runtimeClassName" not in pod_spec(workload)
    worker = rendered.component("Deployment", "worker")
    assert container(worker)["image"].endswith(":0.1.0-cpu")
    assert _env(rendered, "worker", "HERD_N_GPU_LAYERS") == "0"


@pytest.mark.parametrize("profile", PROFILES)
def test_pods_run_restricted(profile: str) -> None:
    for workload in _workloads(render_profile(profile)):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        mounts_by_volume = {v["name"]: v for v in spec["volumes"]}
        for ctr in spec["containers"]:
            context = ctr["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "add" not in context["capabilities"]
            mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
            assert "emptyDir" in mounts_by_volume[mounts["/tmp"]], "a writable /tmp"


@pytest.mark.parametrize("profile", PROFILES)
def test_root_filesystems_are_read_only_where_possible(profile: str) -> None:
    rendered = render_profile(profile)
    read_only = {
        workload["metadata"]["labels"]["app.kubernetes.io/component"]
        for workload in _workloads(rendered)
        if container(workload)["securityContext"]["readOnlyRootFilesystem"]
    }
    assert {"api"} <= read_only
    assert ("redis" in read_only) == bool(rendered.of_kind("StatefulSet"))
    assert ("worker" in read_only) == (profile == "cpu-only")


@pytest.mark.parametrize("profile", PROFILES)
def test_pods_outlive_their_drain(profile: str) -> None:
    rendered = render_profile(profile)
    api = rendered.component("Deployment", "api")
    pre_stop = container(api)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    api_budget = int(pre_stop[1]) + float(_env(rendered, "api", "HERD_SHUTDOWN_GRACE_S"))
    assert pod_spec(api)["terminationGracePeriodSeconds"] > api_budget
    worker = rendered.component("Deployment", "worker")
    worker_drain = float(_env(rendered, "worker", "HERD_SHUTDOWN_GRACE_S"))
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > worker_drain
    assert int(pre_stop[1]) == merged_values(profile)["api"]["preStopSleepSeconds"]


@pytest.mark.parametrize("profile", ["keda", "production-like"])
def test_keda_scales_workers_on_each_models_stream(profile: str) -> None:
    rendered = render_profile(profile)
    values = merged_values(profile)
    [scaled] = rendered.of_kind("ScaledObject")
    triggers = scaled["spec"]["triggers"]
    expected = [job_stream(normalize(model)) for model in values["worker"]["keda"]["models"]]
    assert [t["metadata"]["stream"] for t in triggers] == expected
    redis_service = rendered.get(
        "Service", rendered.component("StatefulSet", "redis")["metadata"]["name"]
    )
    [port] = redis_service["spec"]["ports"]
    auth = rendered.get("TriggerAuthentication", triggers[0]["authenticationRef"]["name"])
    password_ref = env_secret_file(
        rendered.component("Deployment", "api"), "HERD_REDIS_PASSWORD_FILE"
    )
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert metadata["consumerGroup"] == JOB_GROUP == "herd-workers"
        assert metadata["lagCount"] == str(values["worker"]["keda"]["lagCount"])
        assert (
            metadata["address"]
            == f"{redis_service['metadata']['name']}.{NAMESPACE}.svc:{port['port']}"
        )
        assert metadata["enableTLS"] == "false" and metadata["databaseIndex"] == "0"
    [ref] = auth["spec"]["secretTargetRef"]
    assert {"name": ref["name"], "key": ref["key"]} == password_ref
    policy = rendered.get("NetworkPolicy", redis_service["metadata"]["name"])
    peers = policy["spec"]["ingress"][0]["from"]
    keda_namespace = values["worker"]["keda"]["operatorNamespace"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": keda_namespace}}
    } in peers


def test_keda_streams_use_herds_model_names() -> None:
    models = [
        "Llama3.2",
        "gemma3:270m",
        "library/qwen2.5:0.5B",
        "Registry.Ollama.AI/team/x",
        "hf.co/User/Repo-GGUF:Q4_K_M",
    ]
    rendered = render({"worker": {"keda": {"enabled": True, "models": models}}})
    triggers = rendered.get("ScaledObject", "herd-worker")["spec"]["triggers"]
    streams = [t["metadata"]["stream"] for t in triggers]
    assert streams == [job_stream(normalize(model)) for model in models]
    assert streams[0] == "herd:jobs:llama3.2:latest"


def test_keda_follows_an_external_tls_redis() -> None:
    values = profile_values("external-redis")
    values["worker"] = {"keda": {"enabled": True}}
    rendered = render(values)
    [trigger] = rendered.get("ScaledObject", "herd-worker")["spec"]["triggers"]
    url = urlsplit(values["externalRedis"]["url"])
    assert trigger["metadata"]["address"] == url.netloc
    assert trigger["metadata"]["enableTLS"] == "true"
    assert trigger["metadata"]["databaseIndex"] == url.path.lstrip("/")
    auth = rendered.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"][0]["name"] == values["externalRedis"]["existingSecret"]


def test_keda_asks_the_sentinels_for_the_master() -> None:
    rendered = render_profile("sentinel")
    sentinel = merged_values("sentinel")["externalRedis"]["sentinel"]
    [trigger] = rendered.get("ScaledObject", "herd-worker")["spec"]["triggers"]
    assert trigger["type"] == "redis-sentinel-streams"
    metadata = trigger["metadata"]
    assert metadata["addresses"] == ",".join(sentinel["addresses"])
    assert metadata["sentinelMaster"] == sentinel["masterName"]
    assert metadata["databaseIndex"] == "0" and metadata["enableTLS"] == "false"
    assert metadata["consumerGroup"] == JOB_GROUP and "address" not in metadata
    auth = rendered.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    api = rendered.component("Deployment", "api")
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    for parameter, variable in [
        ("password", "HERD_REDIS_PASSWORD_FILE"),
        ("sentinelPassword", "HERD_REDIS_SENTINEL_PASSWORD_FILE"),
    ]:
        ref = env_secret_file(api, variable)
        assert {"name": refs[parameter]["name"], "key": refs[parameter]["key"]} == ref
    # no Sentinel password: KEDA gets the data password only
    values = profile_values("sentinel")
    values["externalRedis"]["sentinel"]["existingSecret"] = ""
    auth = render(values).get("TriggerAuthentication", "herd-worker")
    assert [ref["parameter"] for ref in auth["spec"]["secretTargetRef"]] == ["password"]


def test_sentinels_replace_the_url() -> None:
    rendered = render_profile("sentinel")
    sentinel = merged_values("sentinel")["externalRedis"]["sentinel"]
    assert not rendered.of_kind("StatefulSet")
    for component in ("api", "worker"):
        workload = rendered.component("Deployment", component)
        env = env_entries(container(workload))
        assert "HERD_REDIS_URL" not in env, "Herd would not use it"
        assert env["HERD_REDIS_SENTINELS"]["value"] == ",".join(sentinel["addresses"])
        assert env["HERD_REDIS_SENTINEL_MASTER"]["value"] == sentinel["masterName"]
        assert env_secret_file(workload, "HERD_REDIS_SENTINEL_PASSWORD_FILE") == {
            "name": sentinel["existingSecret"],
            "key": sentinel["existingSecretPasswordKey"],
        }
    # the Sentinels' password is optional; the bundled Redis ignores externalRedis.sentinel
    values = profile_values("sentinel")
    values["externalRedis"]["sentinel"]["existingSecret"] = ""
    worker = render(values).component("Deployment", "worker")
    assert "HERD_REDIS_SENTINEL_PASSWORD_FILE" not in env_entries(container(worker))
    [auth] = [v for v in pod_spec(worker)["volumes"] if v["name"] == "redis-auth"]
    assert [s["secret"]["items"][0]["path"] for s in auth["projected"]["sources"]] == ["password"]
    bundled = render({"externalRedis": {"sentinel": {"addresses": ["s:26379"]}}})
    env = env_entries(container(bundled.component("Deployment", "api")))
    assert "HERD_REDIS_URL" in env and "HERD_REDIS_SENTINELS" not in env
    assert "HERD_REDIS_SENTINEL_PASSWORD_FILE" not in env


def test_external_redis_replaces_the_bundled_one() -> None:
    rendered = render_profile("external-redis")
    values = merged_values("external-redis")
    assert not rendered.of_kind("StatefulSet") and not rendered.of_kind("NetworkPolicy")
    assert not rendered.of_kind("Secret") and not rendered.of_kind("ConfigMap")
    assert _env(rendered, "api", "HERD_REDIS_URL") == values["externalRedis"]["url"]
    ref = env_secret_file(rendered.component("Deployment", "api"), "HERD_REDIS_PASSWORD_FILE")
    assert ref == {
        "name": values["externalRedis"]["existingSecret"],
        "key": values["externalRedis"]["existingSecretPasswordKey"],
    }
    # no password: nothing to mount
    values = profile_values("external-redis")
    values["externalRedis"]["existingSecret"] = ""
    for component in ("api", "worker"):
        workload = render(values).component("Deployment", component)
        assert "HERD_REDIS_PASSWORD_FILE" not in env_entries(container(workload))
        assert "redis-auth" not in {v["name"] for v in pod_spec(workload)["volumes"]}


@pytest.mark.parametrize("profile", PROFILES)
def test_redis_passwords_are_read_only_files_for_the_pods_group(profile: str) -> None:
    """Mounted, never env vars: root-owned 0440 files the container reads through its fsGroup
    (a Secret volume's files are root's, so 0400 would lock the container user out)."""
    values = merged_values(profile)
    for component in ("api", "worker"):
        workload = render_profile(profile).component("Deployment", component)
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        env = env_entries(container(workload))
        if "HERD_REDIS_PASSWORD_FILE" not in env and "HERD_REDIS_SENTINEL_PASSWORD_FILE" not in env:
            assert "redis-auth" not in volumes
            continue
        assert volumes["redis-auth"]["projected"]["defaultMode"] == 0o440
        security = pod_spec(workload)["securityContext"]
        # the group the kubelet gives the files, and the container's supplementary group
        assert security["fsGroup"] == values[component]["podSecurityContext"]["fsGroup"]
        assert security["runAsUser"] != 0 and security["runAsNonRoot"]
        [mount] = [m for m in container(workload)["volumeMounts"] if m["name"] == "redis-auth"]
        assert mount["readOnly"] and "subPath" not in mount  # subPath: never updated


@pytest.mark.parametrize("profile", [p for p in PROFILES if merged_values(p)["redis"]["enabled"]])
def test_bundled_redis_is_durable_and_fenced(profile: str) -> None:
    rendered = render_profile(profile)
    redis = rendered.component("StatefulSet", "redis")
    ctr = container(redis)
    config = rendered.get("ConfigMap", redis["metadata"]["name"])["data"]["redis.conf"].splitlines()
    assert "appendonly yes" in config and "maxmemory-policy noeviction" in config
    assert f"port {container_port(ctr, 'redis')}" in config
    assert "requirepass" not in "\n".join(config), "the password stays in the Secret"
    assert "REDIS_PASSWORD" not in " ".join(ctr["command"]), "never on the command line"
    # a uid outside the system range (the image's redis user is 999), /data writable via fsGroup
    security = pod_spec(redis)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] >= 10000 and security["fsGroup"] == security["runAsGroup"]
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    [claim] = redis["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/data"} in ctr["volumeMounts"]
    headless = rendered.get("Service", redis["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"

    policy = rendered.get("NetworkPolicy", redis["metadata"]["name"])
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(redis))
    [rule] = policy["spec"]["ingress"]
    assert [container_port(ctr, p["port"]) for p in rule["ports"]] == [6379]
    selectors = [
        peer["podSelector"]["matchLabels"] for peer in rule["from"] if "podSelector" in peer
    ]
    herd_pods = [pod_labels(rendered.component("Deployment", c)) for c in ("api", "worker")]
    assert all(any(selects(s, labels) for s in selectors) for labels in herd_pods)
    stranger = {**pod_labels(redis), "app.kubernetes.io/component": "debug"}
    other_release = {**herd_pods[0], "app.kubernetes.io/instance": "other"}
    assert not any(selects(s, labels) for s in selectors for labels in (stranger, other_release))


@pytest.mark.parametrize(
    ("profile", "kind"),
    [("default", "emptyDir"), ("gpu", "pvc"), ("production-like", "existingClaim")],
)
def test_models_are_mounted_where_herd_looks(profile: str, kind: str) -> None:
    rendered = render_profile(profile)
    worker = rendered.component("Deployment", "worker")
    mounts = {m["mountPath"]: m["name"] for m in container(worker)["volumeMounts"]}
    models_dir = _env(rendered, "worker", "HERD_MODELS_DIR")
    volume = next(v for v in pod_spec(worker)["volumes"] if v["name"] == mounts[models_dir])
    if kind == "emptyDir":
        assert "emptyDir" in volume
        return
    claim_name = volume["persistentVolumeClaim"]["claimName"]
    if kind == "pvc":
        claim = rendered.get("PersistentVolumeClaim", claim_name)
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    else:
        assert claim_name == merged_values(profile)["models"]["storage"]["existingClaim"]
        assert not rendered.of_kind("PersistentVolumeClaim")


@pytest.mark.parametrize(
    ("profile", "shared"),
    [("default", False), ("cpu-only", False), ("gpu", True), ("production-like", True)],
)
def test_the_api_shares_the_workers_model_store(profile: str, shared: bool) -> None:
    rendered = render_profile(profile)
    models_dir = merged_values(profile)["models"]["dir"]
    stores = {}
    for component in ("api", "worker"):
        workload = rendered.component("Deployment", component)
        ctr = container(workload)
        mounts = [m for m in ctr["volumeMounts"] if m["mountPath"] == models_dir]
        if component == "api" and not shared:
            # a per-worker emptyDir: the API has no store (its store routes answer an error)
            assert mounts == [] and "HERD_MODELS_DIR" not in env_entries(ctr)
            assert all(v["name"] != "models" for v in pod_spec(workload)["volumes"])
            continue
        [mount] = mounts
        assert not mount.get("readOnly"), "uploads, creates and pulls write into the store"
        assert env_entries(ctr)["HERD_MODELS_DIR"]["value"] == models_dir
        [volume] = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
        stores[component] = volume
    if shared:
        assert stores["api"] == stores["worker"]
        assert "persistentVolumeClaim" in stores["api"]


def test_the_api_network_policy_ignores_the_model_store() -> None:
    values = {"api": {"networkPolicy": {"enabled": True}}}
    shared = {**values, "models": {"storage": {"type": "pvc"}}}
    [own, with_store] = [render(v).component("NetworkPolicy", "api") for v in (values, shared)]
    assert own["spec"] == with_store["spec"]


@pytest.mark.parametrize("profile", PROFILES)
def test_volumes_and_config_references_resolve(profile: str) -> None:
    rendered = render_profile(profile)
    for workload in _workloads(rendered):
        spec = pod_spec(workload)
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in spec["volumes"]} | claims
        for ctr in spec["containers"]:
            assert {m["name"] for m in ctr["volumeMounts"]} <= volumes
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert rendered.find("ConfigMap", volume["configMap"]["name"])
        assert spec["serviceAccountName"] in {
            sa["metadata"]["name"] for sa in rendered.of_kind("ServiceAccount")
        }
