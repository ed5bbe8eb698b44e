"""``herd top``: one frame (``--once``) and the live view, against a running API with
FakeEngine workers (real Redis)."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
import time

import httpx
import pytest
from rich.console import Console

from cli.top import Sampler, top
from cli.verbs import TIMEOUT, VerbError
from tests.conftest import ApiFactory, WorkerFactory
from tests.polling import until

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _cluster(api: ApiFactory, worker: WorkerFactory, **settings: object) -> str:
    # each preloads its first model
    await worker(worker_id="w-a", fake_models=["team/tiny:1", "gemma3:270m"], fake_memory="8GiB")
    await worker(worker_id="w-b", fake_models=["team/tiny:1"], fake_memory="4GiB")
    return str((await api(**settings)).base_url)


async def _once(url: str, headers: dict[str, str] | None = None) -> str:
    """What ``herd top --once`` prints, in a console wide enough for whole rows."""
    out = io.StringIO()

    def run() -> None:
        with httpx.Client(base_url=url, timeout=TIMEOUT, headers=headers) as client:
            top(client, Console(file=out, width=160, color_system=None), once=True)

    await asyncio.to_thread(run)
    return out.getvalue()


def _row(text: str, first: str) -> list[str]:
    """The table row (split on its borders) whose first cell is ``first``."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{text}")


async def test_once_shows_the_workers_and_the_models(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    url = await _cluster(api, worker)
    text = await _once(url)
    assert "2 workers" in text and "- tokens/s" in text  # one frame: no rate yet
    host, memory, slots, models = _row(text, "w-a")[1:]
    assert host  # the machine the worker runs on
    assert re.fullmatch(r"[█░]{20} [\d.]+ [KMG]?B/[\d.]+ GB", memory), memory
    busy, total = map(int, slots.split("/"))
    assert 0 <= busy <= total and total > 0
    assert models.startswith("team/tiny:1 0/")
    assert _row(text, "w-b")[-1].startswith("team/tiny:1 ")
    replicas, loading, waiting, running = _row(text, "team/tiny:1")[1:5]
    assert (replicas, loading, waiting, running) == ("2 w-a, w-b", "0", "0", "0")


async def test_tokens_per_second_from_two_samples(api: ApiFactory, worker: WorkerFactory) -> None:
    url = await _cluster(api, worker)
    async with httpx.AsyncClient(base_url=url) as chat:

        def sample_around_a_chat() -> dict[str, float] | None:
            with httpx.Client(base_url=url) as client:
                sampler = Sampler(client)
                assert sampler.sample().rates is None
                answer = asyncio.run_coroutine_threadsafe(
                    chat.post("/api/chat", json={"model": "team/tiny:1", **CHAT}), loop
                ).result(timeout=30)
                assert answer.status_code == 200
                # the workers' next heartbeat carries the answer's tokens: one of the
                # samples after it sees them arrive
                for _ in range(30):
                    rates = sampler.sample().rates
                    if rates and rates["team/tiny:1"] > 0:
                        break
                    time.sleep(0.1)
                return rates

        loop = asyncio.get_running_loop()
        rates = await asyncio.to_thread(sample_around_a_chat)
    assert rates is not None and rates["team/tiny:1"] > 0
    assert rates.get("gemma3:270m", 0.0) == 0.0


async def test_with_api_keys_top_sends_the_key(api: ApiFactory, worker: WorkerFactory) -> None:
    url = await _cluster(api, worker, api_keys="sesame-sesame")
    with pytest.raises(VerbError, match="unauthorized"):
        await _once(url)
    assert "w-a" in await _once(url, {"Authorization": "Bearer sesame-sesame"})


async def test_the_command_line_once_and_live(api: ApiFactory, worker: WorkerFactory) -> None:
    url = await _cluster(api, worker)
    env = {**os.environ, "HERD_HOST": url, "COLUMNS": "160"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "top", "--once", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert _row(out.decode(), "w-b")[0] == "w-b"
    # live: redrawn until interrupted; the last view stays on the screen
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "top",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        # as from a terminal: a test run started in the background (`make test &`) ignores
        # SIGINT, its children inherit that, and Python then never turns Ctrl-C into
        # KeyboardInterrupt (the view would never stop)
        preexec_fn=_interruptible,
    )
    assert process.stdout is not None
    await asyncio.sleep(2.5)
    await worker(worker_id="w-c", fake_models=["gemma3:270m"])
    await asyncio.sleep(1.5)
    process.send_signal(signal.SIGINT)
    out, _ = await process.communicate()
    assert process.returncode == 130
    assert _row(out.decode(), "w-c")[0] == "w-c"
    await until(lambda: process.returncode is not None)


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
