"""Jobs for the workers: building them, running the ones that answer once (load, embed),
and unloading a model cluster-wide.

A request is validated into a job *template* (every field but its id and times); each run
stamps a fresh copy, so the same validated call can be run again (the /v1 layer does).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from redis.asyncio import Redis

from api.dispatch import Dispatcher
from api.registry import Registry
from shared import keys
from shared.errors import HerdError
from shared.messages import ControlMessage, DoneEvent, GenerateJob, StartedEvent


def template(**fields: Any) -> GenerateJob:
    """A job with everything but its id and times (``stamped`` fills those)."""
    return GenerateJob(request_id="", enqueued_at_ms=0, deadline_ms=0, **fields)


def stamped(job: GenerateJob, queue_timeout_s: float) -> GenerateJob:
    now_ms = int(time.time() * 1000)
    ready = job.model_copy(
        update={
            "request_id": uuid.uuid4().hex,
            "enqueued_at_ms": now_ms,
            "deadline_ms": now_ms + int(queue_timeout_s * 1000),
        }
    )
    structlog.contextvars.bind_contextvars(request_id=ready.request_id, model=ready.model)
    return ready


def load_time(started_ns: int, event: StartedEvent) -> int:
    """Queue wait plus model load: what the API waited, or what the worker measured."""
    return max(time.perf_counter_ns() - started_ns, event.load_ns)


async def run_once(dispatcher: Dispatcher, job: GenerateJob) -> tuple[DoneEvent, int]:
    """Run a job that answers with its done event alone; returns it and the load time."""
    started, load_ns = time.perf_counter_ns(), 0
    async with dispatcher.submit(job) as events:
        async for event in events:
            if isinstance(event, StartedEvent):
                load_ns = load_time(started, event)
            elif isinstance(event, DoneEvent):
                return event, load_ns
    raise HerdError("the model produced no response")  # the relay ends with done or raises


async def unload(client: Redis, registry: Registry, name: str) -> int:
    """Ask every worker that has ``name`` loaded to unload it (once its jobs finish), as
    ``keep_alive: 0`` with nothing to generate does; returns how many were asked."""
    holders = await registry.holders(name)
    message = ControlMessage(action="unload", model=name).to_fields()
    for worker_id in holders:
        await client.xadd(
            keys.control_stream(worker_id),
            message,  # type: ignore[arg-type]
            maxlen=keys.STREAM_MAXLEN,
            approximate=True,
        )
    return len(holders)
