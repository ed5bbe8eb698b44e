"""Load tickets: a model is loaded by one worker at a time, cluster-wide.

A ticket is a key (``keys.load_ticket``) set with ``NX``: the worker that sets it loads,
others see the model as being placed. It expires on its own, so a worker that dies while
loading leaves the model placeable again within ``ttl``; the holder refreshes it while the
load runs, and when the load ends leaves it for ``cooldown`` (one model gains replicas one
at a time, which is the scale-out's hysteresis), or deletes it if the load failed.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from shared import keys

# Compare-and-set: only the holder may extend or end its ticket.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Tickets:
    def __init__(self, client: Redis, worker_id: str) -> None:
        self._client = client
        self._id = worker_id
        self._extend = client.register_script(_EXTEND)

    async def take(self, model: str, ttl_s: float) -> bool:
        taken = await self._client.set(keys.load_ticket(model), self._id, nx=True, px=_ms(ttl_s))
        return bool(taken)

    async def extend(self, model: str, ttl_s: float) -> bool:
        """Keep holding the ticket ``ttl_s`` more; 0 gives it up now."""
        return bool(await self._extend(keys=[keys.load_ticket(model)], args=[self._id, _ms(ttl_s)]))

    async def held(self, models: Iterable[str]) -> dict[str, str]:
        """The models among ``models`` whose ticket is taken, and by whom."""
        names = list(models)
        if not names:
            return {}
        values = await self._client.mget([keys.load_ticket(m) for m in names])
        return {m: v.decode() for m, v in zip(names, values, strict=True) if v is not None}


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))
