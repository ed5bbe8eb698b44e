"""Running one claimed job, whatever its kind, and publishing its events.

Every kind first holds its model resident (``Residency.use``: loading it if needed), then
publishes ``started`` (its ``load_ns`` covers the queue wait and the load, Ollama's
``load_duration``); nobody listening means the client is gone and the job is dropped, once
a few more tries in ``ANNOUNCE_RETRIES_S`` found nobody either (an API process that lost
Redis subscribes again only a moment after Redis is back, and this worker may claim the job
first: its client still waits).

Redis lost mid-answer (a publish failed for good): the job stops, and its error event is
published once Redis answers again (redis-py's backoff, up to ``OWED_ERROR_S``): otherwise
the client, whose worker still lives, would wait for the rest forever.

- ``load``: nothing more; the answer is done with ``done_reason: "load"``. The advert is
  refreshed before (after every load, for every kind), so /api/ps shows the model at once.
- ``embed``: the engine's vectors, cut to ``dimensions`` and normalised, on the done event.
- ``chat``/``generate``: the engine's pieces through ``worker.postprocess`` (thinking, tool
  calls), as token events; a token that reaches nobody stops the generation.
- A continuable job (``GenerateJob.continuable``, on an engine that ``continues``)
  records its answer's token ids as its chunks go out; a later attempt (the worker that ran
  it died, or drained: ``worker.drain``) reads them and the engine goes on from there
  (``started`` says from where), so its client sees one answer.
- A draining worker's request to give a job back (``drain.Handoff``) stops it between two
  outputs, or before it starts, with nothing published: the worker re-queues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.errors import EngineFailure, ErrorType, HerdError
from shared.messages import GenerateJob, ModelAdvert
from worker.drain import Handoff, bound
from worker.embeddings import shape_embeddings
from worker.engine import Engine, Finish
from worker.metrics import WorkerMetrics
from worker.postprocess import Chunk, Postprocessor, thinks
from worker.publisher import Batcher, Publisher, unpack
from worker.residency import Residency

log = structlog.get_logger()

#: Pauses between announcing a job's start again when nobody listened (see the module).
ANNOUNCE_RETRIES_S = (0.25, 0.5, 1.0, 2.0)
#: How often a job that has sent no chunk yet looks whether its client left.
LEFT_POLL_S = 1.0
#: How long a job that lost Redis mid-answer keeps trying to publish its error event.
OWED_ERROR_S = 600.0
LOST_REDIS = "lost the connection to Redis mid-answer"


class HandedOff(Exception):
    """The job stopped to go back to its stream (a drain asked)."""


class JobRunner:
    def __init__(
        self,
        client: Redis,
        engine: Engine,
        residency: Residency,
        worker_id: str,
        refresh_advert: Callable[[], Awaitable[None]],
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._batcher = Batcher(client)
        self._engine = engine
        self._residency = residency
        self._worker_id = worker_id
        self._refresh_advert = refresh_advert
        #: Answer tokens generated here so far, by model (the advert carries them: the
        #: status page's and ``herd top``'s tokens/s, cluster-wide).
        self.tokens: dict[str, int] = {}

    def handoff(self, job: GenerateJob) -> Handoff:
        """What a drain needs to know of ``job`` while it runs here."""
        advert = next((m for m in self._engine.models() if m.name == job.model), None)
        continuable = self._engine.continues and job.continuable() and not thinks(job, advert)
        return Handoff(
            continuable=continuable, num_predict=bound(job.options.num_predict), model=job.model
        )

    async def run(
        self, job: GenerateJob, attempt: int, handoff: Handoff | None = None, cause: str = "crash"
    ) -> None:
        """Run ``job``; ``cause``: why an earlier attempt stopped (``drain`` or ``crash``)."""
        advert = next((m for m in self._engine.models() if m.name == job.model), None)
        handoff = handoff or self.handoff(job)
        continuable = handoff.continuable
        publisher = Publisher(self._batcher, job.request_id, attempt, continuable=continuable)
        started = time.perf_counter()
        outcome = "dropped"
        try:
            # the queue deadline is the first attempt's: a later one goes on with a request
            # the API still waits for (a client gone has set the cancel marker)
            late = attempt == 1 and time.time() * 1000 > job.deadline_ms
            if late or await self._client.exists(keys.cancel_key(job.request_id)):
                return
            async with self._residency.use(job.model, job.load, job.keep_alive_s) as unlisted:
                # the advert shows the model (loaded here or by placement just now), and
                # the expiry a keep_alive sets, before any answer does
                if unlisted or job.keep_alive_s is not None:
                    await self._refresh_advert()
                waited_ns = max(0, int(time.time() * 1000) - job.enqueued_at_ms) * 1_000_000
                if continuable and attempt > 1:
                    job = await self._resumed(job, cause)
                resumed_at = len(job.resume or [])
                if not await self._announce(publisher, job, waited_ns, resumed_at):
                    return
                handoff.started = True
                outcome = "cancelled"
                watch = asyncio.create_task(self._until_left(job, handoff))
                try:
                    if job.kind == "load":
                        await publisher.loaded()
                        outcome = "load"
                    elif job.kind == "embed":
                        outcome = await self._embed(job, publisher)
                    else:
                        outcome = await self._generate(job, publisher, advert, handoff)
                finally:
                    watch.cancel()
        except HandedOff:
            outcome = "handed_off"
            handoff.handed_off = True
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not handoff.started:
                raise  # nobody heard of it yet: the relay waits for its queue deadline
            outcome = "lost_redis"
            log.warning("job_lost_redis", error=str(exc))
            await _owe_error(publisher)
        except HerdError as exc:
            outcome = exc.error_type.value
            await publisher.error(exc.error_type, exc.message)
        except asyncio.CancelledError:
            if handoff.stopped is not None:
                outcome = handoff.stopped
                raise
            if handoff.requested and handoff.can_go():
                # the grace ran out before its next output (a long prefill, a slow token):
                # it still goes back, nothing reached the client past its progress record
                outcome = "handed_off"
                handoff.handed_off = True
                raise
            outcome = "interrupted"
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(
                    publisher.error(ErrorType.UNAVAILABLE, "worker shut down before finishing")
                )
            raise
        except Exception as exc:
            log.exception("job_failed")
            outcome = "internal"
            await publisher.error(ErrorType.INTERNAL, f"internal error: {exc}")
        finally:
            if self._metrics is not None:
                self._metrics.jobs.labels(job.model, outcome).inc()
            log.info(
                "job_finished",
                kind=job.kind,
                attempt=attempt,
                outcome=outcome,
                seconds=round(time.perf_counter() - started, 3),
            )

    async def _announce(
        self, publisher: Publisher, job: GenerateJob, waited_ns: int, resumed_at: int
    ) -> bool:
        """Publish ``started``; False when nobody listens, tries in ``ANNOUNCE_RETRIES_S``
        included, or the client has left (its cancel marker)."""
        for pause in (*ANNOUNCE_RETRIES_S, None):
            if await publisher.started(self._worker_id, waited_ns, resumed_at):
                return True
            if pause is None or await self._client.exists(keys.cancel_key(job.request_id)):
                return False
            await asyncio.sleep(pause)
        return False

    async def _until_left(self, job: GenerateJob, handoff: Handoff) -> None:
        """Stop the job if its client leaves before its first chunk (a long prompt being
        read publishes nothing, and a PUBLISH nobody hears is what stops it later on)."""
        key = keys.cancel_key(job.request_id)
        while handoff.chunks == 0:
            await asyncio.sleep(LEFT_POLL_S)
            with contextlib.suppress(RedisError, OSError):
                if handoff.chunks == 0 and await self._client.exists(key):
                    log.info("job_client_left")
                    handoff.stopped = "cancelled"
                    if handoff.task is not None:
                        handoff.task.cancel()
                    return

    async def _resumed(self, job: GenerateJob, cause: str) -> GenerateJob:
        """``job`` going on from the answer tokens an earlier attempt recorded, if any."""
        recorded = await self._client.get(keys.progress(job.request_id))
        tokens = unpack(recorded) if recorded else []
        if tokens:
            log.warning("job_continued", tokens=len(tokens), cause=cause)
            if self._metrics is not None:
                self._metrics.continuations.labels(job.model, cause).inc()
        return job.model_copy(update={"resume": tokens or None})

    async def _embed(self, job: GenerateJob, publisher: Publisher) -> str:
        if not job.inputs:  # Ollama: an empty input only loads the model
            await publisher.embedded([], 0, 0)
            return "stop"
        started = time.perf_counter_ns()
        result = await self._engine.embed(job)
        vectors = shape_embeddings(
            result.vectors, dimensions=job.dimensions, normalize=job.normalize
        )
        await publisher.embedded(vectors, result.n_prompt_tokens, time.perf_counter_ns() - started)
        if self._metrics is not None:
            self._metrics.prompt_tokens.labels(job.model).inc(result.n_prompt_tokens)
        return "stop"

    async def _generate(
        self, job: GenerateJob, publisher: Publisher, advert: ModelAdvert | None, drain: Handoff
    ) -> str:
        post = Postprocessor.for_job(job, advert)
        outputs = self._engine.generate(job)
        tokens: list[int] = []  # generated, not yet on a chunk (their text held back)
        try:
            async for output in outputs:
                if drain.requested and drain.can_go() and not isinstance(output, Finish):
                    raise HandedOff  # between two outputs: what the client has is recorded
                if isinstance(output, Finish):
                    chunks = post.finish()
                else:
                    tokens += output.tokens
                    drain.generated(len(output.tokens))
                    self.tokens[job.model] = self.tokens.get(job.model, 0) + len(output.tokens)
                    chunks = post.feed(output)
                for index, chunk in enumerate(chunks):
                    last = index == len(chunks) - 1
                    if not await _send(publisher, chunk, tokens if last else ()):
                        return "cancelled"  # nobody listens any more: the client went away
                    drain.chunks += 1
                    if last:
                        tokens = []
                if isinstance(output, Finish):
                    await publisher.done(output)
                    if self._metrics is not None:
                        self._metrics.tokens_generated.labels(job.model).inc(output.n_decoded)
                        self._metrics.prompt_tokens.labels(job.model).inc(output.n_prompt_tokens)
                    # the prompt tokens a slot's cache saved (Ollama's counts include them)
                    structlog.contextvars.bind_contextvars(
                        prompt_tokens=output.n_prompt_tokens, cached_tokens=output.n_cached
                    )
                    return output.done_reason
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]
        raise EngineFailure("the engine ended the generation without finishing it")


async def _send(publisher: Publisher, chunk: Chunk, tokens: list[int] | tuple[()]) -> bool:
    receivers = await publisher.token(
        chunk.text,
        thinking=chunk.thinking,
        tool_calls=chunk.tool_calls,
        logprobs=chunk.logprobs,
        tokens=tokens,
    )
    return receivers > 0


async def _owe_error(publisher: Publisher) -> None:
    """Publish the job's error event once Redis answers again (the relay then sees it, or
    a gap in the numbering: one error line either way). Its progress record stays: another
    worker may have taken the job over meanwhile and be writing it (the relay ignores this
    attempt's event then)."""
    retry = Retry(
        ExponentialBackoff(cap=10.0, base=0.5), retries=-1, supported_errors=(RedisError,)
    )
    try:
        async with asyncio.timeout(OWED_ERROR_S):
            await retry.call_with_retry(
                lambda: publisher.error(ErrorType.UNAVAILABLE, LOST_REDIS, clear=False), _ignore
            )
    except TimeoutError:
        log.error("job_error_unpublished", seconds=OWED_ERROR_S)


async def _ignore(_: Exception) -> None:
    return None
