"""The cluster's state in Redis as API and workers both read it: each model's queue, the
live workers' adverts, the replica policies.

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

from shared import keys
from shared.messages import ReplicaPolicy, WorkerAdvert

log = structlog.get_logger()


# One model's job stream: {waiting, pending, ms the oldest waiting job has waited}, in
# Redis's own clock (hosts' clocks do not matter). Redis 6.2 has no XINFO ``lag``.
_QUEUE = """
local length = redis.call('XLEN', KEYS[1])
if length == 0 then return {0, 0, 0} end
local pending, last = 0, '0-0'
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  if info['name'] == ARGV[1] then pending, last = info['pending'], info['last-delivered-id'] end
end
local waiting = math.max(0, length - pending)
if waiting == 0 then return {0, pending, 0} end
local oldest = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
if #oldest == 0 then return {waiting, pending, 0} end
local now = redis.call('TIME')
local since = tonumber(string.match(oldest[1][1], '^(%d+)'))
return {waiting, pending, math.max(0, now[1] * 1000 + math.floor(now[2] / 1000) - since)}
"""


@dataclass(frozen=True)
class Queue:
    #: Jobs no worker has taken yet.
    waiting: int = 0
    #: Jobs taken and not answered yet (running, or loading the model).
    pending: int = 0
    #: How long the oldest waiting job has waited (0 when none waits).
    oldest_wait_s: float = 0.0


async def queues(client: Redis, models: Iterable[str]) -> dict[str, Queue]:
    """Each model's queue, in one round trip."""
    names = list(models)
    if not names:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            # EVAL, not a registered script: that costs the pipeline a SCRIPT EXISTS first
            pipe.eval(_QUEUE, 1, keys.job_stream(name), keys.JOB_GROUP)
        replies = await pipe.execute()
    return {
        name: Queue(waiting=int(waiting), pending=int(pending), oldest_wait_s=int(ms) / 1000)
        for name, (waiting, pending, ms) in zip(names, replies, strict=True)
    }


async def live_workers(client: Redis) -> list[WorkerAdvert]:
    """The adverts of workers whose heartbeat is live."""
    ids = await client.zrangebyscore(keys.WORKERS_INDEX, time.time(), "+inf")
    return await adverts_of(client, ids)


async def adverts_of(client: Redis, ids: list[bytes]) -> list[WorkerAdvert]:
    """The adverts of these workers (one gone meanwhile is left out)."""
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
