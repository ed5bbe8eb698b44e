"""Prefix-aware routing: a chat's next turn goes to the worker that answered the last one
(its KV cache holds the conversation), and never waits on a worker that does not take it."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from shared import keys, prefix
from shared.messages import ChatMessage
from tests.conftest import ApiFactory, WorkerFactory, read_advert
from worker.fake_engine import FakeEngine

MODEL = "gemma3:270m"


def _seen(engine: object) -> list[str]:
    assert isinstance(engine, FakeEngine)
    return engine.seen


async def _converse(client: Any, turns: int) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": "hi"}]
    for turn in range(turns):
        body = {"model": MODEL, "messages": messages, "stream": False}
        reply = await client.post("/api/chat", json=body)
        assert reply.status_code == 200, reply.text
        answer = reply.json()["message"]
        messages += [
            {"role": "assistant", "content": answer["content"]},
            {"role": "user", "content": f"and then {turn}?"},
        ]
    return messages


async def test_every_turn_of_a_conversation_goes_to_one_worker(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    first = await worker(worker_id="w1")
    second = await worker(worker_id="w2")
    await _converse(client, 6)
    assert sorted([len(_seen(first.engine)), len(_seen(second.engine))]) == [0, 6]


async def test_without_prefix_routing_turns_go_wherever_a_slot_is(
    api: ApiFactory, worker: WorkerFactory, redis: Redis
) -> None:
    client = await api(prefix_routing=False)
    await worker(worker_id="w1")
    await _converse(client, 2)
    assert await redis.keys(keys.prefix_owner("*")) == []  # nothing recorded, nothing routed


async def test_a_routed_job_its_worker_does_not_take_moves_to_the_model_stream(
    api: ApiFactory, worker: WorkerFactory, redis: Redis
) -> None:
    client = await api()
    real = await worker(worker_id="w1")
    # "ghost" advertises the model with a free slot but never reads its stream
    ghost = (await read_advert(redis, "w1")).model_copy(update={"worker_id": "ghost"})
    await redis.set(keys.worker_key("ghost"), ghost.model_dump_json(), ex=60)
    await redis.zadd(keys.WORKERS_INDEX, {"ghost": time.time() + 60})
    await redis.xgroup_create(keys.worker_jobs("ghost"), keys.JOB_GROUP, id="0", mkstream=True)
    history = [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="yo")]
    await redis.set(keys.prefix_owner(prefix.digest(MODEL, history)), "ghost")
    messages = [m.model_dump(exclude_none=True) for m in history]
    messages.append({"role": "user", "content": "still there?"})
    started = time.monotonic()
    reply = await client.post("/api/chat", json={"model": MODEL, "messages": messages})
    assert reply.status_code == 200
    assert len(_seen(real.engine)) == 1
    assert time.monotonic() - started < 3  # the affinity wait, not the queue timeout
    assert await redis.xlen(keys.worker_jobs("ghost")) == 0  # moved, not copied
