"""The ``herd`` client verbs against a running API (real Redis, a FakeEngine worker).

The verbs are synchronous (httpx.Client); the API runs in this test's event loop, so they
run on a thread.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cli.verbs import VerbError, base_url, human_size
from shared.hostaddr import parse_host
from tests.cli.conftest import verb_caller
from tests.conftest import ApiFactory, WorkerFactory
from worker.fake_engine import REPLY


async def _verbs(api: ApiFactory, worker: WorkerFactory) -> tuple[str, Callable[..., Any]]:
    await worker(fake_models=["gemma3:270m", "team/tiny:1"])
    url = str((await api()).base_url)
    return url, verb_caller(url)


async def test_list_show_cp_rm(api: ApiFactory, worker: WorkerFactory) -> None:
    _, verb = await _verbs(api, worker)
    listed = (await verb("list_models")).splitlines()
    assert listed[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert {line.split()[0] for line in listed[1:]} == {"gemma3:270m", "team/tiny:1"}
    shown = await verb("show", "Gemma3:270M")  # names match case-insensitively
    assert "Capabilities" in shown and "completion" in shown and "architecture" in shown
    assert await verb("cp", "gemma3:270m", "mine") == "copied 'gemma3:270m' to 'mine'\n"
    assert "mine:latest" in await verb("list_models")
    assert await verb("rm", ["mine"]) == "deleted 'mine'\n"
    assert "mine:latest" not in await verb("list_models")
    with pytest.raises(VerbError, match="model 'mine:latest' not found"):
        await verb("show", "mine")


async def test_run_ps_and_stop(api: ApiFactory, worker: WorkerFactory) -> None:
    _, verb = await _verbs(api, worker)
    assert await verb("run", "team/tiny:1", "hello", lambda: None) == REPLY + "\n\n"
    lines: Iterator[str] = iter(["first\n", "\n", "second\n"])
    conversation = await verb("run", "gemma3:270m", None, lambda: next(lines, None))
    assert conversation == (REPLY + "\n\n") * 2
    running = await verb("ps")
    assert "team/tiny:1" in running and "100% CPU" in running
    await verb("stop", "team/tiny:1")
    for _ in range(50):
        if "team/tiny:1" not in await verb("ps"):
            break
        await asyncio.sleep(0.1)
    assert "team/tiny:1" not in await verb("ps")


async def test_the_cli_prints_the_apis_error_and_exits_1(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    url, _ = await _verbs(api, worker)
    env = {**os.environ, "HERD_HOST": url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "show", "missing", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 1
    assert err.decode() == "Error: model 'missing:latest' not found\n"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "ls", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0 and "gemma3:270m" in out.decode()


def test_helpers() -> None:
    assert base_url(parse_host("0.0.0.0:11434")) == "http://127.0.0.1:11434"
    assert base_url(parse_host("https://herd.example.com")) == "https://herd.example.com:443"
    assert [human_size(n) for n in (999, 253_000_000, 4_100_000_000)] == [
        "999 B",
        "253.0 MB",
        "4.1 GB",
    ]


async def test_the_cli_sends_herd_api_key(api: ApiFactory, worker: WorkerFactory) -> None:
    await worker(fake_models=["gemma3:270m"])
    url = str((await api(api_keys="ops:s3cret-key-for-tests")).base_url)

    async def ls(**extra: str) -> tuple[int | None, str]:
        env = {k: v for k, v in os.environ.items() if k != "HERD_API_KEY"}
        env.update(HERD_HOST=url, **extra)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "ls", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        return process.returncode, (out + err).decode()

    code, text = await ls()
    assert code == 1 and "unauthorized" in text
    code, text = await ls(HERD_API_KEY="s3cret-key-for-tests")
    assert code == 0 and "gemma3:270m" in text
