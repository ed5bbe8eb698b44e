"""Poison jobs: a job whose runs stopped ``HERD_MAX_ATTEMPTS`` workers is not run again.

It moves to the dead-letter stream (``keys.DEAD_LETTERS``) with why, and its client gets
one error event, all in one transaction, so that it is neither lost nor retried forever
(a prompt that crashes llama.cpp would otherwise take down every worker in turn). ``herd
dlq`` lists the entries, drops them or runs one again.
"""

from __future__ import annotations

import time

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis

from shared import keys
from shared.errors import WORKER_LOST, ErrorType
from shared.messages import ErrorEvent, GenerateJob, encode_event

log = structlog.get_logger()


def poison_message(attempts: int) -> str:
    return f"{WORKER_LOST} (its runs stopped {attempts} workers: set aside, not retried)"


async def set_aside(
    client: Redis,
    stream: str,
    entry_id: str,
    fields: dict[bytes, bytes],
    last_worker: str,
    attempts: int,
) -> None:
    """Move a pending job to the dead-letter stream and answer its client with an error."""
    try:
        request_id = GenerateJob.from_fields(fields).request_id
    except (ValidationError, KeyError):
        request_id = ""
    error = ErrorEvent(
        request_id=request_id,
        attempt=attempts + 1,  # after every attempt the client may have seen begin
        seq=0,
        error_type=ErrorType.INTERNAL,
        message=poison_message(attempts),
    )
    entry = {
        b"job": fields.get(b"job", b""),
        b"stream": stream.encode(),
        b"attempts": str(attempts).encode(),
        b"last_worker": last_worker.encode(),
        b"at_ms": str(int(time.time() * 1000)).encode(),
    }
    async with client.pipeline(transaction=True) as pipe:
        pipe.xadd(
            keys.DEAD_LETTERS,
            entry,  # type: ignore[arg-type]
            maxlen=keys.DEAD_LETTERS_MAXLEN,
            approximate=True,
        )
        pipe.xack(stream, keys.JOB_GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        if request_id:
            pipe.publish(keys.token_channel(request_id), encode_event(error))
        await pipe.execute()
    log.error(
        "job_set_aside",
        entry_id=entry_id,
        attempts=attempts,
        last_worker=last_worker,
        stream=stream,
    )
