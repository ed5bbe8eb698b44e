"""``herd worker``: probe devices, load models, advertise, and run jobs until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

import structlog

from shared.redis import connect
from shared.settings import Settings
from worker.consumer import Worker
from worker.devices import Devices
from worker.engine import Engine
from worker.health import create_health_app, health_server
from worker.model_files import served_files
from worker.pulls import start_pulls

log = structlog.get_logger()


def build_engine(settings: Settings, devices: Devices) -> Engine:
    if settings.engine == "fake":
        from worker.fake_engine import FakeEngine

        return FakeEngine(
            settings.fake_models,
            settings.fake_token_delay_s,
            capabilities=settings.fake_capabilities,
            load_delay_s=settings.fake_load_delay_s,
            prefill_delay_s=settings.fake_prefill_delay_s,
            slots=settings.slots,
            specs=served_files(settings),
        )
    from worker.llama.engine import LlamaEngine

    return LlamaEngine(
        served_files(settings),
        n_ctx=settings.num_ctx,
        n_gpu_layers=settings.n_gpu_layers,
        num_parallel=settings.slots,
        free_memory=devices.free_bytes,
    )


async def serve_worker(settings: Settings, probe_socket: socket.socket) -> None:
    client = connect(settings)
    devices = Devices()
    worker = Worker(settings, client, build_engine(settings, devices), devices)

    def readiness() -> tuple[bool, str]:
        if not worker.ready:
            return False, "models loading"
        if not worker.advertiser.is_live():
            return False, "heartbeat not reaching redis"
        return True, ""

    app = create_health_app(readiness, worker.metrics)
    probes = health_server(app, settings.worker_health_addr)
    # bound by `herd` before start-up, so a taken port is its one-line error
    probe_task = asyncio.create_task(probes.serve(sockets=[probe_socket]), name="probes")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    # model pulls (arq), where this worker can write a store
    pulls = start_pulls(settings, on_stored=worker.store_changed)
    try:
        await worker.run()
    finally:
        if pulls is not None:
            await pulls.stop()
        probes.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await probe_task
        await client.aclose()


def main(settings: Settings, probe_socket: socket.socket) -> None:
    # every token passes through this loop (hand-off from the model's thread, PUBLISH):
    # uvloop's costs less CPU, which llama.cpp's threads get back (docs/benchmarks.md)
    try:
        import uvloop
    except ImportError:  # not on Windows
        asyncio.run(serve_worker(settings, probe_socket))
    else:
        uvloop.run(serve_worker(settings, probe_socket))
