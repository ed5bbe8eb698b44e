"""A job's events on their way back to the client, checked (``api.dispatch`` sends the job).

The relay enforces the failure rule: events of an older attempt are dropped, a sequence
gap fails the stream, a worker whose heartbeat expired fails it if tokens were already
sent and otherwise waits for another worker to take the job over; a job not started
before its deadline gets 503. Every request ends: done, one error, or an HTTP error.

A job routed to the worker holding its conversation's prefix (``api.dispatch``) is
watched closely until that worker takes it: not taken within ``AFFINITY_WAIT_S``, or its
worker gone before the first token, it moves to the model's stream.

Mid-stream continuation: for a continuable job (``GenerateJob.continuable``) whose worker
died after tokens were sent, the relay waits (``RESUME_WAIT_S``) for the worker that
takes the job over: its ``started`` says after how many of the answer's tokens it goes on
(``resumed_at``), and only if that is exactly the count the last chunk received carried
(``covered``) does the stream go on, with no second ``started`` and no error: one answer,
its eval_count over both workers, its eval_duration the two workers' decoding. Anything
else is the one error line it always was.

Tokens that arrive together go out as one chunk (one line, one write).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Histogram

from api.registry import Registry
from api.tokens import Inbox
from shared.errors import WORKER_LOST, QueueTimeout, Unavailable, from_type
from shared.messages import (
    DoneEvent,
    ErrorEvent,
    GenerateJob,
    StartedEvent,
    TokenEvent,
    decode_event,
)

if TYPE_CHECKING:
    from api.dispatch import Dispatcher
    from api.metrics import ApiMetrics

log = structlog.get_logger()

Event = StartedEvent | TokenEvent | DoneEvent

#: How long a job routed to the worker holding its prefix waits for it to take the job.
AFFINITY_WAIT_S = 1.0
#: How long a stream whose worker died waits for another worker to go on with it (one
#: with the model loaded was live when it died; it takes the job at its next free slot).
RESUME_WAIT_S = 30.0


class Relay:
    """One job's events, checked and in order, for the client (see the module)."""

    def __init__(
        self,
        job: GenerateJob,
        queue: Inbox,
        registry: Registry,
        check_interval_s: float,
        dispatcher: Dispatcher,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self._job = job
        self._metrics = metrics
        #: When the job was submitted, and its last token chunk came (0: none since the
        #: start or a continuation), for the latency histograms.
        self._submitted, self._chunk_at = time.perf_counter(), 0.0
        self._waited = False
        self._inter_token: Histogram | None = None
        self._queue = queue
        self._registry = registry
        self._check_interval_s = check_interval_s
        self._dispatcher = dispatcher
        self.finished = False
        self._worker: str | None = None
        self._n_tokens = 0
        self._text: list[str] = []
        #: (worker, entry id, when) of a job sent to the worker holding its prefix, until
        #: its first token: before that it may still move to the model's stream.
        self.routed: tuple[str, str, float] | None = None
        self._attempt, self._expected = 0, 0
        #: The answer's tokens the last chunk covered; its first and last chunk's times.
        self._covered, self._first_ns, self._last_ns = 0, 0, 0
        #: Waiting for another worker to go on with the answer, until then (monotonic).
        self._resume_until: float | None = None
        #: Decoding time of earlier attempts (a continuation's done adds it).
        self._eval_before_ns = 0
        #: When the last chunk before a continuation came (0: not in one).
        self._gap_from = 0.0

    async def events(self) -> AsyncIterator[Event]:
        held: bytes | BaseException | None = None
        while True:
            if held is not None:
                item, held = held, None
            elif not self._queue.empty():
                item = self._queue.get_nowait()
            else:
                # a routed job is looked after closely until its worker is known to have it
                closely = self.routed is not None and self._worker is None
                waiting_s = AFFINITY_WAIT_S / 4 if closely else self._check_interval_s
                got = await self._queue.get(waiting_s)
                if got is None:
                    await self._check_progress()
                    continue
                item = got
            if isinstance(item, BaseException):
                raise Unavailable(f"lost the token stream: {item}")
            event = decode_event(item)
            if event.attempt < self._attempt:
                continue  # a late chunk of an attempt that was taken over
            resumed = False
            if event.attempt > self._attempt:
                if self._n_tokens:
                    if not self._continues(event):
                        raise Unavailable(WORKER_LOST)
                    resumed = True
                self._attempt, self._expected = event.attempt, 0
            if event.seq != self._expected:
                raise Unavailable(
                    f"lost chunks of the stream (expected {self._expected}, got {event.seq})"
                )
            self._expected += 1
            if isinstance(event, ErrorEvent):
                self.finished = True
                raise from_type(event.error_type, event.message)
            if isinstance(event, StartedEvent):
                self._worker = event.worker_id
                if self._metrics is not None and not self._waited:
                    self._waited = True  # the first start only (not a take-over's)
                    self._metrics.queue_wait.labels(self._job.model).observe(
                        time.perf_counter() - self._submitted
                    )
                if resumed:  # the client has its started: the answer just goes on
                    self._resume_until = None
                    self._eval_before_ns += self._last_ns - self._first_ns
                    self._first_ns = self._last_ns = 0
                    self._gap_from, self._chunk_at = self._chunk_at, 0.0
                    log.warning("stream_continued", worker_id=event.worker_id, at=self._covered)
                    continue
            elif isinstance(event, TokenEvent):
                self._observe_chunk()
                self._n_tokens += 1
                self.routed = None
                self._last_ns = time.perf_counter_ns()
                self._first_ns = self._first_ns or self._last_ns
                # tokens that arrived together go out as one chunk: one line, one write
                while held is None and not self._queue.empty():
                    raw = self._queue.get_nowait()
                    after = None if isinstance(raw, BaseException) else decode_event(raw)
                    if not (
                        isinstance(after, TokenEvent)
                        and (after.attempt, after.seq) == (self._attempt, self._expected)
                    ):
                        held = raw
                        break
                    event, self._expected = _joined(event, after), self._expected + 1
                self._text.append(event.text)
                self._covered = event.covered or self._covered
            else:
                self.finished = True
                if self._eval_before_ns:
                    event = event.model_copy(
                        update={"eval_ns": event.eval_ns + self._eval_before_ns}
                    )
                if self._worker is not None:
                    self._dispatcher.remember(self._job, self._worker, "".join(self._text))
            yield event
            if self.finished:
                return

    def _observe_chunk(self) -> None:
        """Time to first token, or since the last chunk (called before counting it)."""
        now = time.perf_counter()
        if self._metrics is not None:
            model = self._job.model
            if self._gap_from:
                self._metrics.continuation_gap.labels(model).observe(now - self._gap_from)
            if not self._n_tokens:
                self._metrics.time_to_first_token.labels(model).observe(now - self._submitted)
            elif self._chunk_at:
                if self._inter_token is None:  # looked up once: a lookup per chunk shows
                    self._inter_token = self._metrics.inter_token_latency.labels(model)
                self._inter_token.observe(now - self._chunk_at)
        self._chunk_at, self._gap_from = now, 0.0

    async def _check_progress(self) -> None:
        if self.routed is not None:
            owner, entry_id, since = self.routed
            alive = await self._registry.is_alive(owner)
            unclaimed = self._worker is None and time.monotonic() - since >= AFFINITY_WAIT_S
            if not alive or unclaimed:
                if await self._dispatcher.move(self._job, owner, entry_id, alive=alive):
                    # a fresh run from the model's stream: numbering starts again
                    self.routed, self._worker = None, None
                    self._attempt, self._expected = 0, 0
                    return
                if not alive:
                    self.routed = None  # answered meanwhile, or gone: the rules below
        if self._worker is not None:
            if await self._registry.is_alive(self._worker):
                return
            log.warning("worker_lost", worker_id=self._worker, tokens_sent=self._n_tokens)
            if self._n_tokens:
                # go on only with another replica ready to take it over
                others = set(await self._registry.replicas(self._job.model)) - {self._worker}
                if not (self._job.continuable() and self._covered and others):
                    raise Unavailable(WORKER_LOST)
                self._resume_until = time.monotonic() + RESUME_WAIT_S
            self._worker = None  # another worker reclaims the job; wait for its attempt
        elif self._resume_until is not None:
            if time.monotonic() > self._resume_until:
                raise Unavailable(WORKER_LOST)
        elif time.time() * 1000 > self._job.deadline_ms:
            raise QueueTimeout("timed out waiting for a worker")

    def _continues(self, event: Event | ErrorEvent) -> bool:
        """Whether a new attempt's first event goes on exactly where the client is."""
        return (
            isinstance(event, StartedEvent)
            and event.seq == 0
            and event.resumed_at > 0
            and event.resumed_at == self._covered
        )


def _joined(first: TokenEvent, then: TokenEvent) -> TokenEvent:
    """Two consecutive token events as one (the later one's numbering)."""
    return then.model_copy(
        update={
            "text": first.text + then.text,
            "thinking": first.thinking + then.thinking,
            "tool_calls": [*(first.tool_calls or []), *(then.tool_calls or [])] or None,
            "logprobs": [*(first.logprobs or []), *(then.logprobs or [])] or None,
        }
    )
