"""The model store as the API's routes write it (``/api/blobs``, ``/api/create``,
``/api/copy``, ``/api/delete``): this process's ``Store``, or a clear 501 where it has none,
and the bump of ``keys.STORE_VERSION`` that makes every worker rescan after a change."""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.asyncio import Redis

from api.registry import Registry
from shared.errors import NO_STORE, NoModelStore
from shared.settings import Settings
from shared.store import Store
from shared.store.notify import bump_store_version


def optional_store(settings: Settings) -> Store | None:
    """The store of ``HERD_MODELS_DIR``; None on an API pod that has none."""
    return None if settings.models_dir is None else Store(settings.models_dir)


def required_store(settings: Settings) -> Store:
    """The store, or 501 ``this server has no model store (set HERD_MODELS_DIR)``."""
    store = optional_store(settings)
    if store is None:
        raise NoModelStore(NO_STORE)
    return store


log = structlog.get_logger()

#: How often ``served`` looks at the adverts while it waits.
LOOK_EVERY_S = 0.05


async def changed(client: Redis) -> None:
    """Tell the workers the store's models changed (they rescan on their next heartbeat)."""
    await bump_store_version(client)


async def served(registry: Registry, name: str, digest: str, *, within_s: float) -> bool:
    """Wait until a ready worker advertises ``name`` with ``digest`` (its manifest's): a
    client that hears ``success`` can use the model at once, as with Ollama. False if none
    did within ``within_s`` (a worker's next heartbeat rescans; no worker may share the
    store): the write stands either way."""
    if not await registry.workers(fresh=True):
        return False  # no worker up: nobody to wait for (one that starts reads the store)
    deadline = time.monotonic() + within_s
    while True:
        advert = (await registry.served(fresh=True)).get(name)
        if advert is not None and advert.digest == digest:
            return True
        if time.monotonic() >= deadline:
            log.warning("model_not_served_yet", model=name, waited_s=within_s)
            return False
        await asyncio.sleep(LOOK_EVERY_S)
