"""A worker's control stream (``keys.control_stream``): the API asks it to unload a model.

It is read with plain ``XREAD`` by a task of its own, so a message never waits for a free
job slot. Messages are deleted once handled; the stream goes when the worker stops, and a
stale one (left by a worker of the same id that died) is dropped at start.
"""

from __future__ import annotations

import asyncio

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.messages import ControlMessage
from worker.residency import Residency

log = structlog.get_logger()


async def clear(client: Redis, worker_id: str) -> None:
    await client.delete(keys.control_stream(worker_id))


async def control_loop(client: Redis, worker_id: str, residency: Residency) -> None:
    stream = keys.control_stream(worker_id)
    last = "0-0"
    while True:
        try:
            reply = await client.xread({stream: last}, count=16, block=keys.BLOCK_MS)
        except (RedisError, OSError) as exc:
            log.warning("control_read_failed", error=str(exc))
            await asyncio.sleep(1)
            continue
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id.decode()
                try:
                    message = ControlMessage.from_fields(fields)
                except (ValidationError, KeyError):
                    log.error("control_invalid", entry_id=last)
                else:
                    log.info("control_received", action=message.action, model=message.model)
                    residency.expire(message.model)  # the only action: unload once idle
                try:
                    await client.xdel(stream, last)
                except (RedisError, OSError) as exc:
                    log.warning("control_ack_failed", error=str(exc))
