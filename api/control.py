"""Load and unload requests: the only side effects a request has besides its own job.

A request with nothing to generate loads its model (a ``load`` job that any worker with
the file takes; answered once it reports the model loaded). With ``keep_alive: 0`` it
unloads the model instead: an unload message goes to the control stream of every worker
that has it loaded, and each unloads once its jobs finish.
"""

from __future__ import annotations

from redis.asyncio import Redis

from api.dispatch import Dispatcher, run_once, stamp
from api.registry import Registry
from api.requests import Load, Unload
from api.state import AppState
from shared import keys
from shared.messages import ControlMessage


async def load(dispatcher: Dispatcher, action: Load, *, queue_timeout_s: float) -> None:
    """Run the load job; returns once a worker has the model loaded."""
    await run_once(dispatcher, stamp(action.job, queue_timeout_s))


async def unload(client: Redis, registry: Registry, action: Unload) -> int:
    """Ask every worker that has the model loaded to unload it; returns how many."""
    holders = await registry.holders(action.name)
    message = ControlMessage(action="unload", model=action.name).to_fields()
    for worker_id in holders:
        await client.xadd(
            keys.control_stream(worker_id),
            message,  # type: ignore[arg-type]
            maxlen=keys.STREAM_MAXLEN,
            approximate=True,
        )
    return len(holders)


async def run(state: AppState, action: Load | Unload) -> None:
    """Do what a load or unload request asks (``responses.control_answer`` answers it)."""
    if isinstance(action, Load):
        await load(state.dispatcher, action, queue_timeout_s=state.settings.queue_timeout_s)
    else:
        await unload(state.redis, state.registry, action)
