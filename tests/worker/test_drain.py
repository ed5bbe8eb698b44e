"""Draining workers hand their streams to others (``worker.drain``): a rolling update of
real worker processes (FakeEngine) under 30 long streams cuts none of them."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import time
from typing import Any

import httpx
import orjson
import structlog
from redis.asyncio import Redis

from shared import keys
from tests.conftest import ApiFactory, ProcessFactory, process_log, worker_env
from tests.metrics_text import parse, value
from tests.polling import until
from worker import drain
from worker.fake_engine import COUNT_MARKER, REPLY

log = structlog.get_logger()

MODEL = "gemma3:270m"
N_STREAMS = 30
N_TOKENS = 150
#: 150 tokens at 0.04 s: six seconds an answer, so every stream is in flight at a SIGTERM.
DELAY_S = 0.04
BODY = {
    "model": MODEL,
    "prompt": f"{COUNT_MARKER} count",
    "think": False,  # the fake model thinks by default: a stream that could not move
    "options": {"temperature": 0, "num_predict": N_TOKENS},
}


async def _stream(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[list[Any], float]:
    """Every line of a streamed answer, and the longest gap between two of them."""
    chunks: list[dict[str, Any]] = []
    arrivals: list[float] = []
    async with client.stream("POST", "/api/generate", json=body, timeout=120) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line:
                chunks.append(orjson.loads(line))
                arrivals.append(time.monotonic())
    return chunks, max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0)


def _worker(herd_process: ProcessFactory, redis_url: str, worker_id: str) -> Any:
    return herd_process(
        "worker",
        **worker_env(redis_url, worker_id, fake_token_delay_s=DELAY_S, num_parallel=12),
    )


async def _ready(redis: Redis, worker_id: str) -> bool:
    raw = await redis.get(keys.worker_key(worker_id))
    return raw is not None and bool(orjson.loads(raw)["ready"])


async def test_a_rolling_update_cuts_no_stream(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    client = await api()
    old = {f"old{i}": _worker(herd_process, redis_url, f"old{i}") for i in range(3)}
    for worker_id in old:
        await until(lambda w=worker_id: _ready(redis, w), timeout_s=30)  # type: ignore[misc]
    streams = [asyncio.create_task(_stream(client, BODY)) for _ in range(N_STREAMS)]

    async def all_running() -> bool:
        pending = await redis.xpending(keys.job_stream(MODEL), keys.JOB_GROUP)
        return int(pending["pending"]) == N_STREAMS

    await until(all_running, timeout_s=15)
    await asyncio.sleep(0.5)  # every stream has tokens out
    new: list[subprocess.Popen[bytes]] = []
    # as a Deployment's rolling update does it: a new pod ready, then an old one stopped
    for index, (worker_id, child) in enumerate(old.items()):
        new.append(_worker(herd_process, redis_url, f"new{index}"))
        await until(lambda i=index: _ready(redis, f"new{i}"), timeout_s=30)  # type: ignore[misc]
        child.send_signal(signal.SIGTERM)
        await asyncio.to_thread(child.wait, 20)
        assert child.returncode == 0, worker_id
    results = await asyncio.gather(*streams)

    expected = "".join(f"{i} " for i in range(N_TOKENS))
    for chunks, _ in results:
        assert not any("error" in chunk for chunk in chunks), chunks[-1]
        # no token lost or repeated: the numbers are contiguous
        assert "".join(chunk["response"] for chunk in chunks) == expected
        last = chunks[-1]
        assert last["done"] is True and sum(1 for c in chunks if c["done"]) == 1
        assert last["eval_count"] == N_TOKENS
    handed = [
        line
        for child in old.values()
        for line in process_log(child)
        if line.get("event") == "job_given_back"
    ]
    resumed = [
        line["tokens"]
        for child in new
        for line in process_log(child)
        if line.get("event") == "job_continued"
    ]
    assert handed and len(resumed) >= len(handed) - N_STREAMS  # each went on somewhere
    gap = max(g for _, g in results)
    log.info(
        "rollout_drill",
        streams=N_STREAMS,
        handed_back=len(handed),
        largest_gap_s=round(gap, 3),
        extra_prefill_share=round(sum(resumed) / (N_STREAMS * N_TOKENS), 3),
    )
    assert gap < 5.0  # a hand-off costs a claim and a re-read, not the grace period
    page = (await client.get("/metrics")).text
    _, found = parse(page)
    assert value(found, "herd_continuation_gap_seconds_count", model=MODEL) >= 1


async def test_a_stream_that_cannot_move_finishes_where_it_runs(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    """A stream whose sampler keeps state (logprobs) stays on its draining worker and
    finishes within the grace; the worker then stops."""
    client = await api()
    child = herd_process("worker", **worker_env(redis_url, "q0", fake_token_delay_s=0.2))
    await until(lambda: _ready(redis, "q0"), timeout_s=30)
    chunks: list[dict[str, Any]] = []
    body = {"model": MODEL, "prompt": "hi", "logprobs": True}
    async with client.stream("POST", "/api/generate", json=body, timeout=60) as response:
        async for line in response.aiter_lines():
            if line:
                chunks.append(orjson.loads(line))
                if len(chunks) == 2:
                    child.send_signal(signal.SIGTERM)
    assert not any("error" in chunk for chunk in chunks), chunks[-1]
    assert "".join(chunk["response"] for chunk in chunks) == REPLY
    assert chunks[-1]["done"] is True
    await asyncio.to_thread(child.wait, 20)
    assert child.returncode == 0
    assert not any(line.get("event") == "job_given_back" for line in process_log(child))


async def test_a_lone_worker_keeps_a_stream_that_ends_within_the_grace(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    """No other worker can serve the model: handed back, the stream could only wait for
    the grace to run out and fail; it finishes where it runs."""
    client = await api()
    env = worker_env(redis_url, "l0", fake_token_delay_s=DELAY_S, shutdown_grace_s=10)
    child = herd_process("worker", **env)
    await until(lambda: _ready(redis, "l0"), timeout_s=30)
    chunks: list[dict[str, Any]] = []
    async with client.stream("POST", "/api/generate", json=BODY, timeout=60) as response:
        async for line in response.aiter_lines():
            if line:
                chunks.append(orjson.loads(line))
                if len(chunks) == 10:  # about 5.6 s left: more than half the grace
                    child.send_signal(signal.SIGTERM)
    assert not any("error" in chunk for chunk in chunks), chunks[-1]
    assert "".join(chunk["response"] for chunk in chunks) == "".join(
        f"{i} " for i in range(N_TOKENS)
    )
    assert chunks[-1]["done"] is True
    await asyncio.to_thread(child.wait, 20)
    assert child.returncode == 0
    assert not any(line.get("event") == "job_given_back" for line in process_log(child))


def _running(*, continuable: bool, num_predict: int | None, tokens: int, pace_s: float) -> Any:
    handoff = drain.Handoff(continuable=continuable, num_predict=num_predict, model="m")
    handoff.started, handoff.chunks, handoff.tokens = True, tokens, tokens
    handoff.first_token_at, handoff.last_token_at = 100.0, 100.0 + pace_s * (tokens - 1)
    return handoff


def test_the_rule_moves_what_would_not_finish_in_half_the_grace() -> None:
    # 100 tokens left at 0.05 s: 5 s, more than half of a 6 s grace
    assert drain.goes_now(_running(continuable=True, num_predict=200, tokens=100, pace_s=0.05), 6)
    # 20 left: 1 s, it finishes here
    assert not drain.goes_now(
        _running(continuable=True, num_predict=120, tokens=100, pace_s=0.05), 6
    )
    # no bound (num_predict -1): nobody can say, it moves
    unbounded = _running(continuable=True, num_predict=drain.bound(-1), tokens=100, pace_s=0.05)
    assert drain.goes_now(unbounded, 600)
    # a stream whose sampler keeps state stays, once its client has tokens
    assert not drain.goes_now(
        _running(continuable=False, num_predict=None, tokens=3, pace_s=0.05), 6
    )
    # with no other worker to take it, a stream stays once its client has tokens
    assert not drain.goes_now(
        _running(continuable=True, num_predict=200, tokens=100, pace_s=0.05), 6, taker=False
    )
    # before its first chunk anything moves: another worker starts it afresh
    fresh = drain.Handoff(continuable=False, num_predict=None, model="m")
    assert drain.goes_now(fresh, 6)


async def test_a_drain_whose_jobs_all_end_while_it_reads_the_cluster_just_ends(
    redis: Redis,
) -> None:
    """Every await of the drain is a moment for the last jobs to end (a fresh-clone run
    met it: ``asyncio.wait`` refuses an empty set)."""
    tasks: set[asyncio.Task[None]] = set()
    job = asyncio.create_task(asyncio.sleep(0))
    tasks.add(job)
    job.add_done_callback(tasks.discard)  # as the worker keeps its jobs
    await drain.Drain(redis, "w", grace_s=2.0, own_models=[MODEL]).run(tasks, {}, [])
    assert not tasks
