"""POST /api/pull: start a model's pull on the workers (an arq job), or follow the one
already running, and relay its progress lines (``shared.registry.progress``).

The pull is a job, not this request: it goes on if the client leaves or this API process
stops, and a later request for the same model (here or on another API pod) replays its
lines from the start and follows it to the end. The API needs no store for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from arq.connections import ArqRedis
from arq.constants import result_key_prefix
from arq.jobs import Job, JobResult, JobStatus
from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.asyncio import Redis

from api import bodies
from api.errors import progress_response
from api.state import StateDep
from shared import keys, names
from shared.errors import EngineFailure, InvalidRequest, Unavailable
from shared.registry.progress import FUNCTION, decode, is_terminal

router = APIRouter()

#: How often a follower checks that the pull's job still exists while no line comes.
ALIVE_CHECK_S = 5.0
#: The job vanished without a last line (its tries ran out, or it was lost).
LOST = "pull ended without a result"
#: No worker runs pulls (none has a writable HERD_MODELS_DIR), so one would wait forever.
NO_PULLER = "no worker can pull models (none has a writable HERD_MODELS_DIR)"
#: A follower gives up after this long without a line while no worker runs the pull (a
#: running one sends a line at least every ``worker.pulls.KEEPALIVE_S``; a killed worker's
#: pull is taken over within ``HERD_PULL_LEASE_S``; a retry waits a minute at most).
STALL_S = 300.0
#: What it ends with then (the pull itself stays queued: a later request follows it again).
STALLED = "pull stalled: no worker has run it for a while"


async def start_or_follow(redis: Redis, name: str, model: str, *, insecure: bool) -> str:
    """Enqueue the pull of ``model`` unless one runs; the run token to follow."""
    arq = ArqRedis(pool_or_conn=redis.connection_pool)  # shares the pool; never closed here
    job_id = keys.pull_job_id(model)
    for _ in range(5):
        run = uuid.uuid4().hex
        job = await arq.enqueue_job(
            FUNCTION, name, insecure, run, _job_id=job_id, _queue_name=keys.PULL_QUEUE
        )
        if job is not None:
            return run
        # a pull of this model is queued or running: follow it (its token is an argument)
        found = Job(job_id, arq, _queue_name=keys.PULL_QUEUE)
        info = await found.info()
        if info is not None and not isinstance(info, JobResult) and len(info.args) >= 3:
            return str(info.args[2])
        if isinstance(info, JobResult):  # a finished pull's kept result: not a running one
            await arq.delete(result_key_prefix + job_id)
        # it ended between the two calls: try to start one again
    raise EngineFailure("could not start the pull")


async def follow(redis: Redis, model: str, run: str) -> AsyncIterator[dict[str, Any]]:
    """The run's progress lines from its first, to its last; an error line raises."""
    stream = keys.pull_progress(model)
    # the pull queue's name: on arq's default queue a queued pull (a retry's delay, a killed
    # worker's pull not yet taken over) would look gone
    job = Job(
        keys.pull_job_id(model),
        ArqRedis(pool_or_conn=redis.connection_pool),
        _queue_name=keys.PULL_QUEUE,
    )
    last_id: bytes | str = "0-0"
    checked = heard = time.monotonic()
    gone = False
    while True:
        answer = await redis.xread({stream: last_id}, count=100, block=keys.BLOCK_MS)
        for _, entries in answer:
            for entry_id, fields in entries:
                last_id = entry_id
                of, line = decode(fields)
                if of != run:
                    continue  # an earlier pull's line, still kept
                heard = time.monotonic()
                if "error" in line:
                    raise EngineFailure(str(line["error"]))
                yield line
                if is_terminal(line):
                    return
        if answer:
            continue
        if gone:  # one more read after the job vanished found nothing: it left no end
            raise EngineFailure(LOST)
        if time.monotonic() - checked >= ALIVE_CHECK_S:
            checked = time.monotonic()
            status = await job.status()
            # not found, or (a result kept by another arq's settings) complete: it ended
            gone = status in (JobStatus.not_found, JobStatus.complete)
            # queued (a killed worker's pull waiting to be taken over, a retry's delay) is
            # followed on; long silent and run by no worker, it may never run
            stalled = time.monotonic() - heard >= STALL_S
            if not gone and stalled and status != JobStatus.in_progress:
                raise EngineFailure(STALLED)


@router.post("/api/pull")
async def pull(request: Request, state: StateDep) -> Response:
    raw = await request.body()
    body = bodies.parse(raw, bodies.RegistryRequest)
    name = body.model or body.name
    if not name:
        raise InvalidRequest(names.INVALID)
    model = names.normalize(name)  # 400 `invalid model name`
    redis = state.redis
    # every worker running pulls refreshes arq's health key (worker.pulls)
    if not await redis.exists(keys.PULL_HEALTH):
        raise Unavailable(NO_PULLER)
    run = await start_or_follow(redis, name, model, insecure=body.insecure is True)
    lines = follow(redis, model, run)
    return await progress_response(request, lines, stream=body.stream is not False)
