"""Mid-stream continuation across real worker processes (FakeEngine): a worker SIGKILLed
after some chunks, another goes on from the last token the client received, and the
client sees one answer."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis

from shared import keys
from tests.conftest import ApiFactory, ProcessFactory, process_log, worker_env
from tests.polling import until
from worker.fake_engine import COUNT_MARKER, REPLY

MODEL = "gemma3:270m"


async def _owner(redis: Redis) -> str:
    """The worker that has the one job of the model's stream."""
    entries = await redis.xpending_range(keys.job_stream(MODEL), keys.JOB_GROUP, "-", "+", 10)
    assert len(entries) == 1
    return str(entries[0]["consumer"].decode())


async def _stream(
    client: Any, body: dict[str, Any], kill: Any
) -> tuple[list[dict[str, Any]], float]:
    """The chunks of a streamed request; ``kill`` runs after the third. Returns the chunks
    and the longest gap between two of them."""
    chunks: list[dict[str, Any]] = []
    arrivals: list[float] = []
    async with client.stream("POST", "/api/generate", json=body, timeout=60) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line:
                continue
            chunks.append(orjson.loads(line))
            arrivals.append(time.monotonic())
            if len(chunks) == 3:
                await kill()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return chunks, max(gaps)


async def _two_workers(
    herd_process: ProcessFactory, redis: Redis, redis_url: str, ids: list[str]
) -> Callable[[], Awaitable[None]]:
    """Start two slow workers; returns what SIGKILLs the one running the model's job."""
    children = {
        w: herd_process("worker", **worker_env(redis_url, w, fake_token_delay_s=0.2)) for w in ids
    }

    async def both_up() -> bool:
        return all([await redis.exists(keys.worker_key(w)) for w in ids])

    await until(both_up, timeout_s=30)

    async def kill() -> None:
        children[await _owner(redis)].send_signal(signal.SIGKILL)

    return kill


async def test_a_stream_whose_worker_dies_goes_on_on_another(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    client = await api()
    kill = await _two_workers(herd_process, redis, redis_url, ["c0", "c1"])
    body = {"model": MODEL, "prompt": "hi", "think": False, "options": {"temperature": 0}}
    chunks, gap = await _stream(client, body, kill)
    assert not any("error" in chunk for chunk in chunks), chunks[-1]
    assert "".join(chunk["response"] for chunk in chunks) == REPLY
    last = chunks[-1]
    assert last["done"] is True and last["done_reason"] == "stop"
    assert last["eval_count"] == len(REPLY.split(" "))  # the whole answer, both workers
    assert sum(1 for chunk in chunks if chunk["done"]) == 1
    assert gap < 1.0 + 3.0  # the advert's TTL, the janitor's look, a little slack
    assert await redis.keys(keys.progress("*")) == []  # the record went with the answer


async def test_a_stream_that_cannot_continue_still_ends_with_one_error(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    client = await api()
    kill = await _two_workers(herd_process, redis, redis_url, ["d0", "d1"])
    # logprobs: the sampler's state is more than a token list; no continuation
    body = {"model": MODEL, "prompt": "hi", "logprobs": True}
    chunks, _ = await _stream(client, body, kill)
    assert "error" in chunks[-1] and not any(chunk.get("done") for chunk in chunks)


async def test_a_stopped_worker_resumed_after_its_job_moved_stops_that_job(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    """SIGSTOP past the advert's TTL: another worker goes on with the stream. At SIGCONT
    the first one finds the job is no longer its own and stops it, publishing nothing,
    rather than generate it a second time for nobody."""
    client = await api()
    ids = ["s0", "s1"]
    children = {
        w: herd_process("worker", **worker_env(redis_url, w, fake_token_delay_s=0.1)) for w in ids
    }

    async def both_up() -> bool:
        return all([await redis.exists(keys.worker_key(w)) for w in ids])

    await until(both_up, timeout_s=30)
    stopped: list[Any] = []

    async def stop() -> None:
        child = children[await _owner(redis)]
        child.send_signal(signal.SIGSTOP)
        stopped.append(child)

    body = {
        "model": MODEL,
        "prompt": f"{COUNT_MARKER} count",
        "think": False,
        "options": {"temperature": 0, "num_predict": 80},
    }
    streaming = asyncio.create_task(_stream(client, body, stop))
    await until(lambda: bool(stopped), timeout_s=10)
    await asyncio.sleep(3.0)  # past the TTL: the other worker has taken the job over
    stopped[0].send_signal(signal.SIGCONT)
    chunks, _ = await streaming
    assert not any("error" in chunk for chunk in chunks), chunks[-1]
    assert "".join(chunk["response"] for chunk in chunks) == "".join(f"{i} " for i in range(80))
    assert chunks[-1]["done"] is True
    lines = process_log(stopped[0])
    assert any(line.get("event") == "job_taken_over" for line in lines)
    finished = [line for line in lines if line.get("event") == "job_finished"]
    assert [line["outcome"] for line in finished] == ["taken_over"]
