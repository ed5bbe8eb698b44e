"""What is queued for each model, read from its job stream, and who is alive.

A model's stream holds only outstanding work (entries are deleted once answered), so
its length less the group's pending entries is what waits, and the first entry after the
group's last-delivered id is the oldest waiting job (entry ids are milliseconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys
from shared.messages import ReplicaPolicy, WorkerAdvert

log = structlog.get_logger()


@dataclass(frozen=True)
class Queue:
    #: Jobs no worker has taken yet.
    waiting: int = 0
    #: Jobs taken and not answered yet.
    pending: int = 0
    #: How long the oldest waiting job has waited (0 when none waits).
    oldest_wait_s: float = 0.0


async def queues(client: Redis, models: Iterable[str]) -> dict[str, Queue]:
    """Each model's queue, in two pipelined round trips."""
    names = list(models)
    if not names:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for model in names:
            pipe.xlen(keys.job_stream(model))
            pipe.xinfo_groups(keys.job_stream(model))
        replies = await pipe.execute(raise_on_error=False)
    counts: dict[str, tuple[int, int, str]] = {}
    for index, model in enumerate(names):
        length, groups = replies[2 * index], replies[2 * index + 1]
        if isinstance(length, Exception) or isinstance(groups, ResponseError | Exception):
            continue  # no stream yet: nothing queued
        group = next((g for g in groups if _text(g["name"]) == keys.JOB_GROUP), None)
        if group is None:
            continue
        pending = int(group["pending"])
        counts[model] = (max(0, int(length) - pending), pending, _text(group["last-delivered-id"]))
    async with client.pipeline(transaction=False) as pipe:
        for model, (_, _, last) in counts.items():
            pipe.xrange(keys.job_stream(model), min=f"({last}", count=1)
        firsts = await pipe.execute(raise_on_error=False)
    now_ms = time.time() * 1000
    found: dict[str, Queue] = {}
    for (model, (waiting, pending, _)), first in zip(counts.items(), firsts, strict=True):
        if isinstance(first, Exception) or not first:
            found[model] = Queue(0, pending, 0.0)
            continue
        since_ms = int(_text(first[0][0]).split("-")[0])
        found[model] = Queue(max(1, waiting), pending, max(0.0, (now_ms - since_ms) / 1000))
    return found


async def live_workers(client: Redis) -> list[WorkerAdvert]:
    """The adverts of workers whose heartbeat is live."""
    ids = await client.zrangebyscore(keys.WORKERS_INDEX, time.time(), "+inf")
    adverts: list[WorkerAdvert] = []
    if ids:
        for raw in await client.mget([keys.worker_key(_text(i)) for i in ids]):
            if raw is None:  # expired between the two reads
                continue
            try:
                adverts.append(WorkerAdvert.model_validate_json(raw))
            except ValidationError:
                log.warning("worker_advert_invalid")
    return adverts


async def policies(client: Redis) -> dict[str, ReplicaPolicy]:
    """Every model's replica policy (``herd scale``)."""
    found: dict[str, ReplicaPolicy] = {}
    raws: dict[bytes, bytes] = await client.hgetall(keys.POLICIES)  # type: ignore[misc]
    for model, raw in raws.items():
        try:
            found[_text(model)] = ReplicaPolicy.model_validate_json(raw)
        except ValidationError:
            log.warning("replica_policy_invalid", model=_text(model))
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
