"""The chart's monitoring objects scrape routes that exist, and its dashboard and alerts query
series that Herd really exports.

The series are read from the real code: an ``ApiMetrics`` and a ``WorkerMetrics`` get one sample of
every metric, and their Prometheus text is parsed. Every ``herd_*`` name in a PromQL expression
(the dashboard's queries and variables, the PrometheusRule's alerts) must be one of those sample
names (a histogram's ``_bucket``/``_sum``/``_count`` included), and every label it is matched,
grouped or shown by must be one of the metric's labels or one Prometheus adds to a target.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from starlette.testclient import TestClient

from api.metrics import ApiMetrics
from api.metrics import router as api_metrics_router
from shared.messages import DeviceInfo
from tests.metrics_text import parse
from worker.health import create_health_app
from worker.metrics import WorkerMetrics

from .chart import (
    CHART_DIR,
    NAMESPACE,
    Obj,
    container,
    container_port,
    merged_values,
    pod_labels,
    render,
    render_profile,
    selects,
)

DASHBOARD = CHART_DIR / "dashboards" / "herd.json"
#: Labels Prometheus (and the Prometheus Operator) put on every scraped series.
TARGET_LABELS = frozenset({"namespace", "job", "pod", "instance", "container", "service", "le"})
#: Series the alerts take from outside Herd, and the labels used of them.
EXTERNAL_SERIES = {
    # kube-state-metrics: a worker's restarts (HerdWorkerFlapping)
    "kube_pod_container_status_restarts_total": frozenset({"namespace", "pod", "container"}),
}
MONITORED = {
    "monitoring": {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}},
    "api": {"serviceMonitor": {"enabled": True}},
    "worker": {"podMonitor": {"enabled": True}},
}


class _OneOfEach:
    """A worker's state as the scrape reads it: one model, one device."""

    def slot_counts(self) -> Iterable[tuple[str, int, int]]:
        return [("gemma3:270m", 1, 3)]

    def loaded_count(self) -> int:
        return 1

    def device_snapshot(self) -> list[DeviceInfo]:
        return [DeviceInfo(kind="gpu", name="L4", total_bytes=2**34, free_bytes=2**33)]


def _touch_every_metric(holder: object) -> None:
    """One sample for each metric of an ``ApiMetrics``/``WorkerMetrics``, so its series appear."""
    for metric in vars(holder).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        names = metric._labelnames
        child: Any = metric.labels(*["x"] * len(names)) if names else metric
        if isinstance(metric, Counter):
            child.inc()
        elif isinstance(metric, Gauge):
            child.set(1)
        elif isinstance(metric, Histogram):
            child.observe(1)


def _exported_series() -> dict[str, frozenset[str]]:
    """Sample name -> its label names, of the API's and a worker's /metrics."""
    api = ApiMetrics()
    worker = WorkerMetrics()
    worker.watch(_OneOfEach())
    series: dict[str, set[str]] = {}
    for holder in (api, worker):
        _touch_every_metric(holder)
        _, samples = parse(holder.render().decode())
        for name, labels in samples:
            series.setdefault(name, set()).update(label for label, _ in labels)
    return {name: frozenset(labels) for name, labels in series.items()}


SERIES = _exported_series()


def test_the_exported_series_are_the_documented_ones() -> None:
    # the names of docs/operations.md, "Metrics" (a sanity check of the reading above)
    documented = {
        "herd_requests_total": {"route", "status"},
        "herd_request_duration_seconds_bucket": {"route", "le"},
        "herd_time_to_first_token_seconds_count": {"model"},
        "herd_inter_token_latency_seconds_sum": {"model"},
        "herd_queue_wait_seconds_bucket": {"model", "le"},
        "herd_queue_depth": {"model"},
        "herd_active_streams": set(),
        "herd_tokens_generated_total": {"model"},
        "herd_prompt_tokens_total": {"model"},
        "herd_jobs_total": {"model", "outcome"},
        "herd_worker_slots": {"model", "state"},
        "herd_device_memory_bytes": {"device", "kind"},
        "herd_model_load_seconds_bucket": {"model", "le"},
        "herd_models_loaded": set(),
    }
    assert {name: set(SERIES.get(name, {"<missing>"})) for name in documented} == documented


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_HERD_NAME = re.compile(r"\bherd_[a-zA-Z0-9_]+\b")
_FOREIGN_NAME = re.compile(r"\bkube_[a-zA-Z0-9_]+\b")
_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def _labels_of(name: str) -> frozenset[str]:
    return SERIES.get(name) or EXTERNAL_SERIES.get(name) or frozenset()


def _problems(expr: str, legend: str = "") -> list[str]:
    """What in one PromQL expression names a series or a label that does not exist."""
    code = _STRING.sub('""', expr)  # label values may hold anything
    problems: list[str] = []
    names = set(_HERD_NAME.findall(code)) | set(_FOREIGN_NAME.findall(code))
    problems += [f"no series {n}" for n in names if n not in SERIES and n not in EXTERNAL_SERIES]
    for name, matchers in _SELECTOR.findall(code):
        for label in _MATCHER.findall(matchers):
            if label not in _labels_of(name) | TARGET_LABELS:
                problems.append(f"{name} has no label {label}")
    known = TARGET_LABELS.union(*(_labels_of(n) for n in names))
    for group in _GROUPING.findall(code):
        labels = [label.strip() for label in group.split(",") if label.strip()]
        problems += [f"grouped by unknown label {label}" for label in labels if label not in known]
    problems += [
        f"legend shows unknown label {label}"
        for label in _LEGEND_LABEL.findall(legend)
        if label not in known
    ]
    assert names, f"no series in {expr!r}"
    return problems


def _dashboard() -> Obj:
    dashboard: Obj = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(dashboard: Obj) -> Iterator[Obj]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # rows


def _dashboard_queries(dashboard: Obj) -> list[tuple[str, str, str]]:
    """(where, expression, legend) of every query of the dashboard, its variables' included."""
    queries = [
        (f"panel {panel['title']!r}", target["expr"], target.get("legendFormat", ""))
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            expr = query["query"] if isinstance(query, dict) else query
            inner = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]+)\)", expr)
            assert inner, f"variable {variable['name']}: {expr}"
            queries.append((f"variable {variable['name']}", inner[1], f"{{{{{inner[2]}}}}}"))
    return queries


def test_dashboard_queries_use_exported_series_and_labels() -> None:
    queries = _dashboard_queries(_dashboard())
    assert len(queries) >= 15
    problems = [f"{where}: {p}" for where, expr, legend in queries for p in _problems(expr, legend)]
    assert problems == []


def test_dashboard_shows_what_an_operator_asks_first() -> None:
    dashboard = _dashboard()
    exprs = " ".join(expr for _, expr, _ in _dashboard_queries(dashboard))
    for series in (
        "herd_time_to_first_token_seconds_bucket",
        "herd_inter_token_latency_seconds_bucket",
        "herd_tokens_generated_total",
        "herd_queue_depth",
        "herd_queue_wait_seconds_bucket",
        "herd_worker_slots",
        "herd_device_memory_bytes",
        "herd_requests_total",
    ):
        assert series in exprs, f"the dashboard does not show {series}"
    for quantile in ("histogram_quantile(0.5,", "histogram_quantile(0.99,"):
        assert quantile in exprs
    assert "by (model" in exprs, "latencies per model"
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]


def test_dashboard_configmap_carries_the_file_for_grafanas_sidecar() -> None:
    rendered = render(MONITORED)
    configmap = rendered.component("ConfigMap", "monitoring")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["herd.json"] == DASHBOARD.read_text().rstrip("\n")
    dashboard = {"enabled": True, "namespace": "grafana", "labels": {"grafana_dashboard": "herd"}}
    rendered = render({"monitoring": {"dashboard": dashboard}})
    elsewhere = rendered.component("ConfigMap", "monitoring")
    assert elsewhere["metadata"]["namespace"] == "grafana"
    assert elsewhere["metadata"]["labels"]["grafana_dashboard"] == "herd"


def _alerts(rendered_rule: Obj) -> dict[str, Obj]:
    return {
        rule["alert"]: rule for group in rendered_rule["spec"]["groups"] for rule in group["rules"]
    }


def test_alerts_use_exported_series_and_labels() -> None:
    [rule] = render(MONITORED).of_kind("PrometheusRule")
    alerts = _alerts(rule)
    assert set(alerts) == {
        "HerdNoWorkerForQueuedModel",
        "HerdQueueWaitHigh",
        "HerdContinuationGapHigh",
        "HerdErrorRatioHigh",
        "HerdWorkerFlapping",
    }
    problems = [f"{name}: {p}" for name, alert in alerts.items() for p in _problems(alert["expr"])]
    assert problems == []
    for alert in alerts.values():
        assert alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_alert_thresholds_come_from_the_values() -> None:
    values = {
        **MONITORED,
        "monitoring": {
            "prometheusRule": {
                "enabled": True,
                "queueWaitP99Seconds": 12.5,
                "continuationGapP99Seconds": 4,
                "errorRatio": 0.2,
                "workerRestarts": 7,
                "noWorkerFor": "3m",
                "severity": "page",
            }
        },
    }
    alerts = _alerts(render(values).get("PrometheusRule", "herd"))
    assert alerts["HerdQueueWaitHigh"]["expr"].endswith("> 12.5")
    assert alerts["HerdContinuationGapHigh"]["expr"].endswith("> 4")
    assert alerts["HerdErrorRatioHigh"]["expr"].endswith("> 0.2")
    assert alerts["HerdWorkerFlapping"]["expr"].endswith(">= 7")
    assert alerts["HerdNoWorkerForQueuedModel"]["for"] == "3m"
    assert {alert["labels"]["severity"] for alert in alerts.values()} == {"page"}


def _job_selector(expr: str, series: str) -> dict[str, str]:
    [matchers] = {m for name, m in _SELECTOR.findall(expr) if name == series}
    return dict(re.findall(r'([a-z_]+)="([^"]*)"', matchers))


def test_alerts_select_the_series_the_chart_scrapes() -> None:
    rendered = render(MONITORED)
    alerts = _alerts(rendered.get("PrometheusRule", "herd"))
    [service_monitor] = rendered.of_kind("ServiceMonitor")
    [pod_monitor] = rendered.of_kind("PodMonitor")

    def job_of(endpoint: Obj) -> str:
        [relabel] = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
        assert relabel["action"] == "replace"
        return str(relabel["replacement"])

    api_job = job_of(service_monitor["spec"]["endpoints"][0])
    worker_job = job_of(pod_monitor["spec"]["podMetricsEndpoints"][0])
    no_worker = alerts["HerdNoWorkerForQueuedModel"]["expr"]
    assert _job_selector(no_worker, "herd_queue_depth") == {"namespace": NAMESPACE, "job": api_job}
    assert _job_selector(no_worker, "herd_worker_slots") == {
        "namespace": NAMESPACE,
        "job": worker_job,
    }
    flapping = alerts["HerdWorkerFlapping"]["expr"]
    worker = rendered.component("Deployment", "worker")
    restarts = "kube_pod_container_status_restarts_total"
    assert _job_selector(flapping, restarts) == {
        "namespace": NAMESPACE,
        "container": container(worker)["name"],
    }
    found = re.search(r'pod=~"([^"]*)"', flapping)
    assert found, "the restarts of the worker pods only"
    assert re.fullmatch(found[1], f"{worker['metadata']['name']}-5d8f9c7b4-x2x9z")
    api = rendered.component("Deployment", "api")
    assert not re.fullmatch(found[1], f"{api['metadata']['name']}-5d8f9c7b4-x2x9z")


@pytest.mark.parametrize("profile", ["production-like"])
def test_monitors_scrape_metrics_routes_that_exist(profile: str) -> None:
    rendered = render_profile(profile)
    values = merged_values(profile)
    # the API serves GET /metrics on its HTTP port (the ServiceMonitor's: test_chart_wiring)
    api_routes = {
        (route.path, method)
        for route in api_metrics_router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or set()
    }
    [service_monitor] = rendered.of_kind("ServiceMonitor")
    [api_endpoint] = service_monitor["spec"]["endpoints"]
    assert (api_endpoint["path"], "GET") in api_routes
    assert api_endpoint["path"] == values["api"]["serviceMonitor"]["path"]

    # a worker serves /metrics on its health port, which the PodMonitor scrapes
    [pod_monitor] = rendered.of_kind("PodMonitor")
    worker = rendered.component("Deployment", "worker")
    assert selects(pod_monitor["spec"]["selector"]["matchLabels"], pod_labels(worker))
    assert pod_monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    [endpoint] = pod_monitor["spec"]["podMetricsEndpoints"]
    assert container_port(container(worker), endpoint["port"])
    assert isinstance(endpoint["port"], str), "a named port"
    health = TestClient(create_health_app(lambda: (True, ""), WorkerMetrics()))
    response = health.get(endpoint["path"])
    assert response.status_code == 200 and "herd_jobs_total" in response.text
    assert pod_monitor["metadata"]["labels"]["release"] == "prometheus"


def test_monitoring_objects_are_off_by_default() -> None:
    kinds = render().kinds()
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & kinds
    assert not [c for c in render().of_kind("ConfigMap") if "dashboard" in c["metadata"]["name"]]
    production = render_profile("production-like").kinds()
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= production
