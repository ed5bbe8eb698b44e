"""A worker's Prometheus metrics, served at ``GET /metrics`` on its health port.

The names and labels are part of Herd's interface (docs/operations.md, "Metrics"). Label
values are bounded: a model is one this worker's engine serves (fixed at start), a device
one it probed, an outcome one of the job runner's few (``worker.jobs``).

Counters and the load histogram move as jobs run; slots, loaded models and device memory
are read from the worker at scrape time (``WorkerState`` below), so they are never stale.

Each worker has a ``CollectorRegistry`` of its own rather than prometheus-client's global
default: a process runs one worker, but the tests run several in one process, and two
registrations of one name in one registry fail (and would mix their counts).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.messages import DeviceInfo

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: A model's load: a small GGUF from the page cache in under a second, a large one from a
#: network disk onto GPUs in minutes.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class WorkerState(Protocol):
    """What the scrape reads of the worker (``worker.consumer.Worker``)."""

    def slot_counts(self) -> Iterable[tuple[str, int, int]]:
        """(model, busy, free) for every model loaded here."""
        ...

    def loaded_count(self) -> int: ...

    def device_snapshot(self) -> list[DeviceInfo]: ...


class WorkerMetrics:
    """One worker's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tokens_generated = Counter(
            "herd_tokens_generated", "Tokens generated (answers' tokens)", ["model"], registry=r
        )
        self.prompt_tokens = Counter(
            "herd_prompt_tokens",
            "Prompt tokens of answered jobs, those found in a slot's cache included",
            ["model"],
            registry=r,
        )
        self.jobs = Counter(
            "herd_jobs", "Jobs ended here, by outcome", ["model", "outcome"], registry=r
        )
        self.continuations = Counter(
            "herd_continuations",
            "Answers this worker went on with after another stopped: drained or crashed",
            ["model", "cause"],
            registry=r,
        )
        self.model_load = Histogram(
            "herd_model_load_seconds",
            "Loading a model onto this worker's devices",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )

    def watch(self, state: WorkerState) -> None:
        """Read slots, loaded models and device memory from ``state`` at every scrape."""
        self.registry.register(_Snapshot(state))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Snapshot(Collector):
    def __init__(self, state: WorkerState) -> None:
        self._state = state

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return list(self._families(empty=True))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return list(self._families(empty=False))

    def _families(self, *, empty: bool) -> Iterator[GaugeMetricFamily]:
        slots = GaugeMetricFamily(
            "herd_worker_slots",
            "Slots of the loaded models, busy or free",
            labels=["model", "state"],
        )
        memory = GaugeMetricFamily(
            "herd_device_memory_bytes",
            "Each device's memory as last read (the heartbeat reads it)",
            labels=["device", "kind"],
        )
        loaded = GaugeMetricFamily("herd_models_loaded", "Models loaded on this worker")
        if not empty:
            for model, busy, free in self._state.slot_counts():
                slots.add_metric([model, "busy"], busy)
                slots.add_metric([model, "free"], free)
            for index, device in enumerate(self._state.device_snapshot()):
                name = f"{device.kind}{index}"
                memory.add_metric([name, "total"], device.total_bytes)
                memory.add_metric([name, "free"], device.free_bytes)
                memory.add_metric([name, "used"], max(0, device.total_bytes - device.free_bytes))
            loaded.add_metric([], self._state.loaded_count())
        yield from (slots, memory, loaded)
