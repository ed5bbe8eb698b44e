"""From a validated chat or generate request to Ollama response objects.

Both routes share this: build the job, dispatch it, turn its events into Ollama's chunks
(streamed) or one object (``stream: false``), and log one line per request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api import ollama
from api.dispatch import Dispatcher
from api.streaming import ndjson_response, unless_disconnected
from shared.errors import HerdError
from shared.messages import ChatMessage, DoneEvent, GenerateJob, SamplingOptions, StartedEvent

log = structlog.get_logger()


@dataclass(frozen=True)
class Call:
    """What the API needs to run one request and render its answer."""

    kind: Literal["chat", "generate"]
    model: str  # as the client sent it (echoed back)
    name: str  # normalised (the stream's key)
    options: SamplingOptions
    messages: list[ChatMessage]
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    context: list[int] | None = None

    def chunk(self, text: str) -> dict[str, Any]:
        if self.kind == "chat":
            return ollama.chat_chunk(self.model, text)
        return ollama.generate_chunk(self.model, text)

    def final(self, text: str, done: DoneEvent, *, total_ns: int, load_ns: int) -> dict[str, Any]:
        body = self.chunk(text)
        body.update(done=True, done_reason=done.done_reason)
        if self.kind == "generate" and not self.raw and done.context is not None:
            body["context"] = done.context
        body.update(ollama.metrics(done, total_ns=total_ns, load_ns=load_ns))
        return body


def objects(
    dispatcher: Dispatcher, call: Call, *, queue_timeout_s: float, aggregate: bool = False
) -> AsyncGenerator[dict[str, Any]]:
    """Run ``call``; its answer as native Ollama objects: the streamed chunks, or (with
    ``aggregate``) the one ``stream: false`` object. Errors before the first object raise
    ``HerdError``; the /v1 layer translates these same objects."""
    return _objects(dispatcher, call, _job(call, queue_timeout_s), aggregate=aggregate)


def _job(call: Call, queue_timeout_s: float) -> GenerateJob:
    now_ms = int(time.time() * 1000)
    job = GenerateJob(
        request_id=uuid.uuid4().hex,
        model=call.name,
        kind=call.kind,
        messages=call.messages,
        prompt=call.prompt,
        system=call.system,
        raw=call.raw,
        context=call.context,
        options=call.options,
        enqueued_at_ms=now_ms,
        deadline_ms=now_ms + int(queue_timeout_s * 1000),
    )
    structlog.contextvars.bind_contextvars(request_id=job.request_id, model=call.name)
    return job


async def respond(
    request: Request, dispatcher: Dispatcher, call: Call, *, stream: bool, queue_timeout_s: float
) -> Response:
    answer = objects(dispatcher, call, queue_timeout_s=queue_timeout_s, aggregate=not stream)
    if stream:
        return await ndjson_response(answer)
    final = await unless_disconnected(request, anext(answer))
    await answer.aclose()
    return JSONResponse(final)


async def _objects(
    dispatcher: Dispatcher, call: Call, job: GenerateJob, *, aggregate: bool
) -> AsyncGenerator[dict[str, Any]]:
    started = time.perf_counter_ns()
    load_ns, n_chunks, outcome, worker = 0, 0, "cancelled", ""
    texts: list[str] = []
    try:
        async with dispatcher.submit(job) as events:
            async for event in events:
                if isinstance(event, StartedEvent):
                    load_ns, worker = time.perf_counter_ns() - started, event.worker_id
                elif isinstance(event, DoneEvent):
                    outcome = event.done_reason
                    total_ns = time.perf_counter_ns() - started
                    text = "".join(texts) if aggregate else ""
                    yield call.final(text, event, total_ns=total_ns, load_ns=load_ns)
                elif event.text:
                    n_chunks += 1
                    if aggregate:
                        texts.append(event.text)
                    else:
                        yield call.chunk(event.text)
    except HerdError as exc:
        outcome = exc.error_type.value
        raise
    finally:
        log.info(
            "request_finished",
            kind=call.kind,
            worker_id=worker,
            outcome=outcome,
            chunks=n_chunks,
            load_ms=load_ns // 1_000_000,
            total_ms=(time.perf_counter_ns() - started) // 1_000_000,
        )
