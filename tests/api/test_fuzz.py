"""Fuzzing a running Herd (a real API server, and a FakeEngine worker or a llama.cpp worker
with a tiny random-weight model): Ollama's request bodies and every route of Herd's
/openapi.json, mutated (``tests.api.fuzzing``). Bounded: at most ``FUZZ_PROBES`` requests
(default 400; half as many for llama.cpp) in ``FUZZ_BUDGET_S`` seconds (default 60),
each under a timeout. The contract: no answer of 500 or more, no hang, every 200 stream
ending with one terminal line, and afterwards the API and the worker alive, the model
still served, and a plain request answered.

``FUZZ_SEED``, ``FUZZ_PROBES`` and ``FUZZ_BUDGET_S`` in the environment make a longer run
(a failure names its seed and probe; ``fuzzing.probes(seed)`` replays them).
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import cast

import httpx
import pytest

from tests.api import fuzzing
from tests.conftest import ApiFactory, WorkerFactory
from tests.worker.test_llama_engine_tiny import write_tiny_llama
from worker.consumer import Worker
from worker.fake_engine import FakeEngine
from worker.llama.engine import LlamaEngine
from worker.model_files import ModelSpec

#: Fixed, so that a run is repeatable; ``FUZZ_SEED=0`` draws one.
SEED = int(os.environ.get("FUZZ_SEED", "20261202")) or random.randrange(1, 10**6)
PROBES = int(os.environ.get("FUZZ_PROBES", "400"))
BUDGET_S = float(os.environ.get("FUZZ_BUDGET_S", "60"))


async def _fuzz(client: httpx.AsyncClient, running: Worker, probes: int) -> None:
    with warnings.catch_warnings():
        # FastAPI warns of the duplicate operation ids of GET+HEAD routes (an error here)
        warnings.simplefilter("ignore")
        routes = fuzzing.openapi_routes((await client.get("/openapi.json")).json())
    assert ("POST", "/api/generate") in routes

    report = await fuzzing.run(
        client, seed=SEED, count=probes, budget_s=BUDGET_S, timeout_s=30, routes=routes
    )
    found = "\n".join([f"fuzz seed {SEED}: {report.summary()}", *report.hangs, *report.failures])
    assert not report.hangs and not report.failures, found
    assert report.sent >= min(probes, 50), found

    # afterwards: both still serve, and the model was never hidden
    assert running.ready
    assert (await client.get("/api/version")).status_code == 200
    tags = (await client.get("/api/tags")).json()["models"]
    assert fuzzing.SERVED in [m["name"] for m in tags]
    body = {"model": fuzzing.SERVED, "messages": fuzzing.USER, "stream": False}
    answer = await client.post("/api/chat", json=body)
    assert answer.status_code == 200 and answer.json()["done"] is True


@pytest.mark.timeout(BUDGET_S + 120)
async def test_fuzzed_requests_never_get_a_5xx_nor_hang(
    api: ApiFactory, worker: WorkerFactory, tmp_path: Path
) -> None:
    # with a model store, so that blobs and create are fuzzed too (without one: 501)
    client = await api(fake_token_delay_s=0.001, models_dir=tmp_path / "store")
    await _fuzz(client, await worker(fake_token_delay_s=0.001), PROBES)


@pytest.mark.timeout(BUDGET_S + 120)
async def test_fuzzed_requests_on_llama_cpp_never_get_a_5xx_nor_hang(
    api: ApiFactory, worker: WorkerFactory, tmp_path: Path
) -> None:
    # the real engine (options reach llama.cpp, prompts its tokenizer) on a tiny model
    # served under the fuzzed name; answers are noise, a few tokens each
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path)
    engine = LlamaEngine(
        [ModelSpec(name=fuzzing.SERVED, path=path)], n_ctx=256, n_gpu_layers=0, num_parallel=2
    )
    client = await api(models_dir=tmp_path / "store")  # blobs and create fuzzed too
    running = await worker(engine=cast(FakeEngine, engine))
    await _fuzz(client, running, max(PROBES // 2, 50))
