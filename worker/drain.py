"""Draining a worker on SIGTERM without cutting a stream (a rollout, a scale-in, a node
drain): its unfinished generations go back to their model's stream for another worker.

The rule, from SIGTERM, with ``grace`` = ``HERD_SHUTDOWN_GRACE_S``:

- A job that has sent its client no token yet (still queued here, loading its model, or
  in prefill) goes back at once; another worker starts it afresh, which the API takes as
  a new attempt before the first token.
- A continuable stream (``GenerateJob.continuable``) goes back at once too, as a
  continuation (its answer's token ids are in ``keys.progress``), unless its own pace says
  it ends within half the grace: ``num_predict`` bounds it, and its tokens/s so far
  covers the tokens left.
- At half the grace every continuable stream still running goes back (the pace misjudged).
- What remains, streams whose parsers keep state a token list does not restore (tools,
  format, thinking, logprobs), has until the grace ends, then fails with one error line.
- So does a stream of a model no other live worker can serve (a lone worker stopped):
  handed back, it could only wait for the grace to run out and fail, where left to run it
  may finish. Whether one can is read at SIGTERM and again at half the grace.

Handing back early leaves at least half the grace for the continuation to start elsewhere
(a model load included) while this worker's advert still stands: the drain keeps it until
another worker claimed every job it gave back (or the grace ran out), so the API waits
for the next attempt instead of calling the worker lost. The advert says ``ready: false`` from
SIGTERM, so placement loads the model elsewhere and the API routes nothing here.

A stream goes back between two of its outputs, never in the middle of a publish: its last
chunk and progress record are in Redis before the job is re-queued, so the continuation
reads exactly what the client received.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.queues import live_workers

log = structlog.get_logger()

#: A job re-queued by a drain carries this in its stream entry: how many attempts ran.
ATTEMPTS_FIELD = b"attempts"
#: ... and why it came back (the continuation metric's ``cause``).
CAUSE_FIELD = b"cause"
#: A stream asked to go back stops at its next output: at the grace's end it gets this
#: long more rather than a cancel in the middle of a publish.
SETTLE_S = 2.0
#: How often a drain looks whether the jobs it gave back were claimed elsewhere.
TAKEN_POLL_S = 0.1


@dataclass
class Handoff:
    """One running job as the drain sees it, and the drain's request to give it back."""

    continuable: bool
    #: The most tokens the answer may have (None: no bound, as Ollama's -1 and -2).
    num_predict: int | None
    model: str
    #: The job's task: cancelled when it goes back before starting.
    task: asyncio.Task[None] | None = None
    started: bool = False
    chunks: int = 0
    tokens: int = 0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    requested: bool = False
    #: True once the job stopped to go back (the worker then re-queues it).
    handed_off: bool = False
    #: Why the job's task was cancelled, when not by a drain or a shutdown: another
    #: worker took it over while this one was silent ("taken_over"), or its client left
    #: before its first chunk ("cancelled"). It stops publishing nothing: nobody needs it.
    stopped: str | None = None

    def generated(self, count: int) -> None:
        """``count`` tokens came out of the engine."""
        now = time.monotonic()
        self.tokens += count
        self.first_token_at = self.first_token_at or now
        self.last_token_at = now

    def can_go(self, taker: bool = True) -> bool:
        """Whether another worker can take this job on without the client noticing;
        ``taker``: whether another live worker can serve its model."""
        return self.chunks == 0 or (self.continuable and taker)

    def ends_within(self, seconds: float) -> bool:
        """Whether, by its own pace so far, the answer ends within ``seconds``."""
        if self.num_predict is None or self.tokens < 2:
            return False
        pace_s = (self.last_token_at - self.first_token_at) / (self.tokens - 1)
        return max(0, self.num_predict - self.tokens) * pace_s <= seconds

    def request(self) -> None:
        """Ask the job to go back: now, if it has not started; else after its next output."""
        self.requested = True
        if not self.started and self.task is not None:
            self.task.cancel()


def bound(num_predict: int | None) -> int | None:
    """An answer's token bound, from Ollama's ``num_predict`` (-1, -2, 0: none)."""
    return num_predict if num_predict is not None and num_predict > 0 else None


def goes_now(handoff: Handoff, grace_s: float, taker: bool = True) -> bool:
    """At SIGTERM: whether a job goes back at once (the rule above); ``taker``: whether
    another live worker can serve its model."""
    if handoff.chunks == 0:
        return True
    return handoff.can_go(taker) and not handoff.ends_within(grace_s / 2)


class Drain:
    """One worker's drain, from SIGTERM: ``run`` gives back what can go (the rule above),
    waits out the grace for the rest, ends what is left (its job then publishes its error
    event), and waits for other workers to take what went back."""

    def __init__(
        self, client: Redis, worker_id: str, grace_s: float, own_models: Collection[str]
    ) -> None:
        self._client = client
        self._id = worker_id
        self._grace = grace_s
        self._own = own_models

    async def run(
        self,
        tasks: set[asyncio.Task[None]],
        handoffs: Mapping[str, Handoff],
        given_back: Sequence[tuple[str, str]],
    ) -> None:
        """``handoffs`` by stream entry, and ``given_back`` (stream, new entry id), as the
        worker keeps them while its jobs end."""
        if not tasks:
            return
        grace = self._grace
        end = time.monotonic() + grace
        served = await self._served_elsewhere()
        now = [h for h in handoffs.values() if goes_now(h, grace, h.model in served)]
        for handoff in now:
            handoff.request()
        log.info("worker_draining", jobs=len(tasks), handed_back=len(now), grace_s=grace)
        # the jobs may all end meanwhile (each await here is one): ``_unfinished`` of none
        pending = await _unfinished(tasks, grace / 2)
        served = await self._served_elsewhere()
        for handoff in handoffs.values():
            if not handoff.requested and handoff.can_go(handoff.model in served):
                handoff.request()
        pending = await _unfinished(pending, max(0.0, end - time.monotonic()))
        # a job on its way back stops at its next output: give it a moment, not a cancel
        # mid-publish (a chunk published after the re-queue would not be in its progress)
        if any(h.requested and h.task in pending for h in handoffs.values()):
            pending = await _unfinished(pending, SETTLE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._until_taken(given_back, max(end, time.monotonic() + SETTLE_S))

    async def _served_elsewhere(self) -> set[str]:
        """The models another live, ready worker can serve (every model this one has, if
        Redis cannot say: a stream then goes back as it would with a taker)."""
        try:
            adverts = await live_workers(self._client)
        except (RedisError, OSError):
            return set(self._own)
        others = [a for a in adverts if a.ready and a.worker_id != self._id]
        return {m.name for a in others for m in a.models}

    async def _until_taken(self, given_back: Sequence[tuple[str, str]], deadline: float) -> None:
        """Wait (until ``deadline``, monotonic) for other workers to claim what this one gave
        back: while its advert stands, the API waits for their attempt rather than calling
        the worker lost, even for a model no other worker had loaded yet."""
        waiting = list(given_back)
        while waiting and time.monotonic() < deadline:
            still: list[tuple[str, str]] = []
            for stream, entry_id in waiting:
                with contextlib.suppress(RedisError, OSError):
                    owned = await self._client.xpending_range(
                        stream, keys.JOB_GROUP, entry_id, entry_id, 1
                    )
                    if owned or not await self._client.xrange(stream, entry_id, entry_id):
                        continue  # claimed, or done already
                still.append((stream, entry_id))
            waiting = still
            if waiting:
                await asyncio.sleep(TAKEN_POLL_S)
        if waiting:
            log.warning("drain_not_taken", entries=len(waiting))


async def _unfinished(tasks: set[asyncio.Task[None]], timeout_s: float) -> set[asyncio.Task[None]]:
    """Those of ``tasks`` still running after up to ``timeout_s`` (``asyncio.wait`` refuses
    an empty set)."""
    if not tasks:
        return set()
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    return pending
