"""Aliases and deletions: the names clients see, over the models the workers serve.

Workers advertise the models they can serve; this layer, shared by every API pod in
Redis, adds two things Ollama clients expect to be able to do:

- ``/api/copy`` makes an alias (hash ``keys.CATALOG_ALIASES``: alias -> served name). A
  request for the alias runs on the served model's stream; the alias is independent of
  its source afterwards (deleting the source leaves it working), as a copied manifest is.
- ``/api/delete`` removes an alias, or hides a served model (set ``keys.CATALOG_DELETED``):
  it leaves ``/api/tags`` and ``/api/show``, and requests for it get 404. Copying onto a
  hidden name brings it back.

This is for the models outside the model store (the default package, loose GGUFs): their
files are never deleted, a hidden one still occupies its disk and may stay loaded until it
expires. A model of the store is copied and deleted in the store itself
(``api.routes.models``); a name written there is ``release``d from any alias or deletion,
one deleted there is hidden like a served model (the catalog of models seen remembers it).
Every route resolves names here. A pod re-reads them at most every
``CACHE_S`` (so a request costs no extra round trip), and at once after its own change:
pods agree within half a second, as they do on the workers' adverts.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from api.cache import Cached
from api.registry import CACHE_S, Registry
from shared import keys, names
from shared.errors import InvalidRequest
from shared.messages import ModelAdvert


@dataclass(frozen=True)
class Entry:
    """A name clients can use and the served model behind it."""

    name: str
    advert: ModelAdvert


class Aliases:
    def __init__(self, client: Redis, registry: Registry) -> None:
        self._client = client
        self._registry = registry
        empty: tuple[dict[str, str], set[str]] = ({}, set())
        self._names = Cached(self._load, empty, CACHE_S)

    async def _read(self, *, fresh: bool = False) -> tuple[dict[str, str], set[str]]:
        """The aliases and the deleted names, re-read at most every ``CACHE_S``."""
        return await self._names.get(fresh=fresh)

    async def _load(self) -> tuple[dict[str, str], set[str]]:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.CATALOG_ALIASES)
            pipe.smembers(keys.CATALOG_DELETED)
            raw_aliases, raw_deleted = await pipe.execute()
        aliases = {k.decode(): v.decode() for k, v in raw_aliases.items()}
        return aliases, {name.decode() for name in raw_deleted}

    async def resolve(self, name: str) -> ModelAdvert | None:
        """The served model a normalised name stands for; None if it names nothing."""
        aliases, deleted = await self._read()
        if name in aliases:
            return await self._registry.find(aliases[name])
        if name in deleted:
            return None
        return await self._registry.find(name)

    async def lookup(self, model: str) -> ModelAdvert | None:
        """What a client's model name stands for; None for an empty or invalid name too
        (``api.requests`` raises the error for those at its place in Ollama's order)."""
        try:
            name = names.normalize(model) if model else ""
        except InvalidRequest:
            return None
        return await self.resolve(name) if name else None

    async def entries(self) -> list[Entry]:
        """Every name a client can use: served models not deleted, and live aliases."""
        served = await self._registry.models(fresh=True)
        aliases, deleted = await self._read(fresh=True)
        hidden = deleted | set(aliases)
        found = [Entry(name, advert) for name, advert in served.items() if name not in hidden]
        found += [
            Entry(alias, served[target]) for alias, target in aliases.items() if target in served
        ]
        return found

    async def copy(self, source: str, destination: str) -> bool:
        """Make ``destination`` name what ``source`` names; False if ``source`` names nothing."""
        advert = await self.resolve(source)
        if advert is None:
            return False
        async with self._client.pipeline(transaction=True) as pipe:
            if destination == advert.name:  # copying a model onto its own served name
                pipe.hdel(keys.CATALOG_ALIASES, destination)
            else:
                pipe.hset(keys.CATALOG_ALIASES, destination, advert.name)
            pipe.srem(keys.CATALOG_DELETED, destination)
            await pipe.execute()
        self._names.expire()  # this pod sees its own change at once
        return True

    async def target(self, name: str) -> str | None:
        """The served name an alias stands for; None if ``name`` is no alias."""
        aliases, _ = await self._read()
        return aliases.get(name)

    async def release(self, name: str) -> None:
        """``name`` now names a model of the store (created or copied there): no alias or
        deletion of an older model may shadow it."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.CATALOG_ALIASES, name)
            pipe.srem(keys.CATALOG_DELETED, name)
            await pipe.execute()
        self._names.expire()

    async def hide(self, name: str) -> None:
        """Keep ``name`` out of every listing and lookup (a model deleted from the store
        stays in the catalog of models seen, which every pod writes back)."""
        await self._client.sadd(keys.CATALOG_DELETED, name)  # type: ignore[misc]
        self._names.expire()

    async def delete(self, name: str) -> bool:
        """Make ``name`` name nothing; False if it named nothing already."""
        served = await self._registry.find(name) is not None
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.CATALOG_ALIASES, name)
            if served:  # a served model of that name (perhaps shadowed by the alias) goes too
                pipe.sadd(keys.CATALOG_DELETED, name)
            changes = await pipe.execute()
        self._names.expire()
        return any(changes)
