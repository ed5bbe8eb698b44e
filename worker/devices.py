"""What a worker runs on: its NVIDIA GPUs through NVML, or the host's RAM in CPU mode."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from types import ModuleType

import structlog

from shared.messages import DeviceInfo

log = structlog.get_logger()


def _load_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:  # nvidia-ml-py is part of the worker extra, but be forgiving
        return None
    module: ModuleType = pynvml
    return module


class Devices:
    """Initialises NVML once; ``snapshot()`` reads the current free memory on every call.

    Without a driver or library (``NVMLError``), the worker runs in CPU mode and reports
    the host's RAM.
    """

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml = nvml if nvml is not None else _load_nvml()
        if self._nvml is not None:
            try:
                self._nvml.nvmlInit()
            except self._nvml.NVMLError as exc:
                log.info("cpu_mode", reason=str(exc))
                self._nvml = None

    @property
    def has_gpu(self) -> bool:
        return bool(self._nvml is not None and self.gpus())

    def gpus(self) -> list[DeviceInfo]:
        nvml = self._nvml
        if nvml is None:
            return []
        try:
            devices = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                devices.append(
                    DeviceInfo(
                        kind="gpu",
                        name=nvml.nvmlDeviceGetName(handle),
                        uuid=nvml.nvmlDeviceGetUUID(handle),
                        total_bytes=int(memory.total),
                        free_bytes=int(memory.free),
                    )
                )
            return devices
        except nvml.NVMLError as exc:
            log.warning("nvml_query_failed", reason=str(exc))
            return []

    def snapshot(self) -> list[DeviceInfo]:
        return self.gpus() or [host_memory()]

    def free_bytes(self, gpu: bool) -> int:
        """Free memory where a model would load: the roomiest GPU, or the host's RAM."""
        gpus = self.gpus() if gpu else []
        return max((d.free_bytes for d in gpus), default=0) if gpus else host_memory().free_bytes

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._nvml = None


def host_memory() -> DeviceInfo:
    """The host's RAM: MemAvailable from /proc/meminfo, else sysconf's free pages."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = page * os.sysconf("SC_PHYS_PAGES")
    free = page * os.sysconf("SC_AVPHYS_PAGES")
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return DeviceInfo(kind="cpu", name="cpu", total_bytes=total, free_bytes=free)


class FakeDevice(Devices):
    """FakeEngine's one device of a given size, its used memory what the engine loaded."""

    def __init__(self, total: int, used: Callable[[], int]) -> None:  # no NVML to start
        self._nvml = None
        self._total = total
        self._used = used

    def gpus(self) -> list[DeviceInfo]:
        free = max(0, self._total - self._used())
        return [DeviceInfo(kind="gpu", name="fake", total_bytes=self._total, free_bytes=free)]
