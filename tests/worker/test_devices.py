"""The NVML path without a GPU: the test substitutes the NVML module's functions."""

from __future__ import annotations

import types
from dataclasses import dataclass

import pynvml
import pytest

from worker.devices import Devices


@dataclass
class _Memory:
    total: int
    free: int


def _fake_nvml(monkeypatch: pytest.MonkeyPatch, count: int) -> types.ModuleType:
    names = {0: "NVIDIA H100 80GB HBM3", 1: "NVIDIA L4"}
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: count)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: names[h])
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lambda h: f"GPU-{h:08d}")
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetMemoryInfo", lambda h: _Memory(total=80 << 30, free=(70 - h) << 30)
    )
    module: types.ModuleType = pynvml
    return module


def test_gpus_are_reported_with_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = Devices(_fake_nvml(monkeypatch, 2))
    snapshot = devices.snapshot()
    assert [d.name for d in snapshot] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert [d.kind for d in snapshot] == ["gpu", "gpu"]
    assert snapshot[1].uuid == "GPU-00000001"
    assert snapshot[0].total_bytes == 80 << 30 and snapshot[1].free_bytes == 69 << 30
    assert devices.has_gpu


def test_no_library_means_cpu_mode_with_host_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    devices = Devices(pynvml)
    snapshot = devices.snapshot()
    assert len(snapshot) == 1 and snapshot[0].kind == "cpu"
    assert 0 < snapshot[0].free_bytes <= snapshot[0].total_bytes
    assert not devices.has_gpu


def test_a_driver_that_fails_mid_query_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = _fake_nvml(monkeypatch, 1)

    def lost(_: int) -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lost)
    assert [d.kind for d in Devices(nvml).snapshot()] == ["cpu"]
