"""Mid-stream continuation across real worker processes (FakeEngine): a worker SIGKILLed
after some chunks, another goes on from the last token the client received, and the
client sees one answer."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis

from shared import keys
from tests.conftest import ApiFactory, ProcessFactory, worker_env
from tests.polling import until
from worker.fake_engine import REPLY

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
