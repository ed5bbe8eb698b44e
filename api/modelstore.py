"""The model store as the API's routes write it (``/api/blobs``, ``/api/create``,
``/api/copy``, ``/api/delete``): this process's ``Store``, or a clear 501 where it has none,
and the bump of ``keys.STORE_VERSION`` that makes every worker rescan after a change."""

from __future__ import annotations

from redis.asyncio import Redis

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


async def changed(client: Redis) -> None:
    """Tell the workers the store's models changed (they rescan on their next heartbeat)."""
    await bump_store_version(client)
