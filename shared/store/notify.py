"""Telling the workers that a store changed: every writer (pull, create, copy, delete)
bumps ``keys.STORE_VERSION`` after its write; each worker compares it on its heartbeat and
rescans its store when it moved (``worker.serving``)."""

from __future__ import annotations

from redis.asyncio import Redis

from shared import keys


async def bump_store_version(client: Redis) -> int:
    """Count one more change to the store (after the write is on disk); the new version."""
    return int(await client.incr(keys.STORE_VERSION))
