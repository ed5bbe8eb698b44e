"""Herd's own verbs (``cluster``, ``scale``) and ``ps``'s WORKERS column, against a running
API with FakeEngine workers (real Redis); ``ps`` against an API without /api/cluster."""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from cli.verbs import VerbError, Verbs
from shared import keys
from shared.messages import ReplicaPolicy
from tests.cli.conftest import verb_caller
from tests.conftest import ApiFactory, WorkerFactory


async def _verbs(api: ApiFactory, worker: WorkerFactory) -> tuple[str, Callable[..., Any]]:
    # each preloads its first model
    await worker(worker_id="w-a", fake_models=["team/tiny:1", "gemma3:270m"])
    await worker(worker_id="w-b", fake_models=["team/tiny:1"])
    url = str((await api()).base_url)
    return url, verb_caller(url)


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


async def test_ps_names_the_worker_of_each_loaded_model(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    _, verb = await _verbs(api, worker)
    rows = _rows(await verb("ps"))
    assert rows[0] == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL", "WORKERS"]
    # one row per worker the model is loaded on, each naming its own
    assert sorted((row[0], row[-1]) for row in rows[1:]) == [
        ("team/tiny:1", "w-a"),
        ("team/tiny:1", "w-b"),
    ]
    await verb("run", "gemma3:270m", "hello", lambda: None)
    rows = _rows(await verb("ps"))
    assert ("gemma3:270m", "w-a") in [(row[0], row[-1]) for row in rows[1:]]


async def test_cluster_lists_workers_memory_slots_and_loaded_models(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    _, verb = await _verbs(api, worker)
    await verb("run", "gemma3:270m", "hello", lambda: None)
    lines = (await verb("cluster")).splitlines()
    assert lines[0].split() == ["ID", "HOST", "MEMORY", "SLOTS", "LOADED"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"w-a", "w-b"}
    row = re.fullmatch(
        r"w-a +(?P<host>\S+) +(?P<memory>-|[\d.]+ [KMGT]?B/[\d.]+ [KMGT]?B) +"
        r"(?P<busy>\d+)/(?P<total>\d+) +(?P<loaded>.+)",
        rows["w-a"],
    )
    assert row is not None, rows["w-a"]
    assert 0 <= int(row["busy"]) <= int(row["total"]) and int(row["total"]) > 0
    assert set(row["loaded"].split(", ")) == {"team/tiny:1", "gemma3:270m"}


async def test_scale_sets_and_removes_a_policy(
    api: ApiFactory, worker: WorkerFactory, redis: Redis
) -> None:
    url, verb = await _verbs(api, worker)
    assert await verb("scale", "team/tiny:1", 1, 2) == "scaled 'team/tiny:1': min 1, max 2\n"
    raw = await redis.hget(keys.POLICIES, "team/tiny:1")  # type: ignore[misc]
    assert ReplicaPolicy.model_validate_json(raw) == ReplicaPolicy(min_replicas=1, max_replicas=2)
    assert await verb("scale", "team/tiny:1", 2, None) == "scaled 'team/tiny:1': min 2\n"
    removed = await verb("scale", "team/tiny:1", 0, None)
    assert removed == "removed the replica policy of 'team/tiny:1'\n"
    assert await redis.hlen(keys.POLICIES) == 0  # type: ignore[misc]
    with pytest.raises(VerbError, match="max_replicas must be at least 1"):
        await verb("scale", "team/tiny:1", 3, 1)
    with pytest.raises(VerbError, match="model 'nope:latest' not found"):
        await verb("scale", "nope", 1, None)
    # the command line: herd scale MODEL --min N [--max M]
    env = {**os.environ, "HERD_HOST": url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "scale", "gemma3:270m", "--min", "1", "--max", "3",
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode == 0 and out.decode() == "scaled 'gemma3:270m': min 1, max 3\n"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "cluster", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0 and out.decode().startswith("ID ")


def test_ps_against_an_api_without_cluster_keeps_ollamas_columns() -> None:
    """An Ollama has no /api/cluster: ``herd ps`` prints what ``ollama ps`` prints."""
    loaded = {
        "name": "gemma3:270m",
        "model": "gemma3:270m",
        "size": 300_000_000,
        "digest": "a" * 64,
        "expires_at": "2318-01-01T00:00:00Z",
        "size_vram": 300_000_000,
        "context_length": 4096,
    }

    def ollama(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/ps":
            return httpx.Response(200, json={"models": [loaded]})
        return httpx.Response(404, text="404 page not found")

    out = io.StringIO()
    with httpx.Client(base_url="http://ollama", transport=httpx.MockTransport(ollama)) as client:
        Verbs(client, out).ps()
    assert _rows(out.getvalue()) == [
        ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"],
        ["gemma3:270m", "a" * 12, "300.0", "MB", "100%", "GPU", "4096", "Forever"],
    ]
