"""Load tickets: how many loads of a model run (or just ran) at once, cluster-wide.

A model's tickets are a hash (``keys.load_ticket``): worker -> when its ticket expires
(Redis's clock). A worker takes one before it loads, in a script that refuses when the
model already holds as many live tickets as the plan allowed: workers whose views differ for
a moment never start more loads than planned, and never two of a cold model. A ticket
expires on its own, so a worker that dies while loading leaves the model placeable within
``ttl``; the holder refreshes it while the load runs, and when the load ends keeps it for
the cooldown (the next scale-out step sees what these replicas took), or drops it.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from shared import keys

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] the model's tickets; ARGV: worker, tickets allowed, ttl ms. 1: taken.
_TAKE = (
    _NOW
    + """
local live = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if tonumber(fields[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif fields[i] ~= ARGV[1] then
    live = live + 1
  end
end
if live >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[3]))
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""
)

# KEYS[1] the model's tickets; ARGV: worker, ttl ms (0: give it up). 1: it was held.
_EXTEND = (
    _NOW
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if tonumber(ARGV[2]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""
)

# KEYS: models' tickets. The count of live ones of each.
_COUNT = (
    _NOW
    + """
local counts = {}
for k = 1, #KEYS do
  local live = 0
  local values = redis.call('HVALS', KEYS[k])
  for i = 1, #values do
    if tonumber(values[i]) > now then live = live + 1 end
  end
  counts[k] = live
end
return counts
"""
)


class Tickets:
    def __init__(self, client: Redis, worker_id: str) -> None:
        self._id = worker_id
        self._take = client.register_script(_TAKE)
        self._extend = client.register_script(_EXTEND)
        self._count = client.register_script(_COUNT)

    async def take(self, model: str, allowed: int, ttl_s: float) -> bool:
        """Take a ticket if ``model`` holds fewer than ``allowed`` others."""
        taken = await self._take(
            keys=[keys.load_ticket(model)], args=[self._id, allowed, _ms(ttl_s)]
        )
        return bool(taken)

    async def extend(self, model: str, ttl_s: float) -> bool:
        """Keep holding the ticket ``ttl_s`` more; 0 gives it up now."""
        return bool(await self._extend(keys=[keys.load_ticket(model)], args=[self._id, _ms(ttl_s)]))

    async def held(self, models: Iterable[str]) -> dict[str, int]:
        """How many live tickets each of ``models`` holds (those holding none left out)."""
        names = list(models)
        if not names:
            return {}
        counts = await self._count(keys=[keys.load_ticket(m) for m in names])
        return {m: int(c) for m, c in zip(names, counts, strict=True) if int(c)}


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))
