"""From a validated chat or generate request to Ollama response objects.

Both routes share this: run the call's job, turn its events into Ollama's chunks
(streamed) or one object (``stream: false``), and log one line per request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api import jobs, ollama
from api.dispatch import Dispatcher
from api.streaming import ndjson_response, unless_disconnected
from shared.errors import HerdError
from shared.messages import DoneEvent, GenerateJob, Logprob, StartedEvent, TokenEvent, ToolCall

log = structlog.get_logger()


@dataclass(frozen=True)
class Call:
    """What the API needs to run one request and render its answer."""

    kind: Literal["chat", "generate"]
    model: str  # as the client sent it (echoed back)
    name: str  # the served model (its stream's key)
    #: The job to run, without id and times (``jobs.stamped`` adds them per run).
    job: GenerateJob

    def chunk(
        self,
        text: str,
        *,
        thinking: str = "",
        calls: list[ToolCall] | None = None,
        probs: list[Logprob] | None = None,
    ) -> dict[str, Any]:
        render = ollama.chat_chunk if self.kind == "chat" else ollama.generate_chunk
        return render(self.model, text, thinking=thinking, calls=calls, probs=probs)

    def final(
        self, answer: _Answer, done: DoneEvent, *, total_ns: int, load_ns: int
    ) -> dict[str, Any]:
        body = self.chunk(
            answer.text(), thinking=answer.thinking(), calls=answer.calls, probs=answer.probs
        )
        probs = body.pop("logprobs", None)
        calls = body.pop("tool_calls", None)  # generate: after the metrics, as Ollama orders
        body.update(done=True, done_reason=done.done_reason)
        if self.kind == "generate" and not self.job.raw and done.context is not None:
            body["context"] = done.context
        body.update(ollama.metrics(done, total_ns=total_ns, load_ns=load_ns))
        if calls:
            body["tool_calls"] = calls
        if probs:
            body["logprobs"] = probs
        return body


@dataclass
class _Answer:
    """What a ``stream: false`` answer accumulates over the chunks."""

    texts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    probs: list[Logprob] = field(default_factory=list)

    def add(self, event: TokenEvent) -> None:
        self.texts.append(event.text)
        self.thoughts.append(event.thinking)
        self.calls.extend(event.tool_calls or [])
        self.probs.extend(event.logprobs or [])

    def text(self) -> str:
        return "".join(self.texts)

    def thinking(self) -> str:
        return "".join(self.thoughts)


def objects(
    dispatcher: Dispatcher, call: Call, *, queue_timeout_s: float, aggregate: bool = False
) -> AsyncGenerator[dict[str, Any]]:
    """Run ``call``; its answer as native Ollama objects: the streamed chunks, or (with
    ``aggregate``) the one ``stream: false`` object. Errors before the first object raise
    ``HerdError``; the /v1 layer translates these same objects."""
    return _objects(dispatcher, call, jobs.stamped(call.job, queue_timeout_s), aggregate=aggregate)


async def respond(
    request: Request, dispatcher: Dispatcher, call: Call, *, stream: bool, queue_timeout_s: float
) -> Response:
    answer = objects(dispatcher, call, queue_timeout_s=queue_timeout_s, aggregate=not stream)
    if stream:
        return await ndjson_response(request, answer)
    final = await unless_disconnected(request, anext(answer))
    await answer.aclose()
    return JSONResponse(final)


def _carries_something(event: TokenEvent) -> bool:
    return bool(event.text or event.thinking or event.tool_calls or event.logprobs)


async def _objects(
    dispatcher: Dispatcher, call: Call, job: GenerateJob, *, aggregate: bool
) -> AsyncGenerator[dict[str, Any]]:
    started = time.perf_counter_ns()
    load_ns, n_chunks, outcome, worker = 0, 0, "cancelled", ""
    answer = _Answer()
    try:
        async with dispatcher.submit(job) as events:
            async for event in events:
                if isinstance(event, StartedEvent):
                    load_ns, worker = jobs.load_time(started, event), event.worker_id
                elif isinstance(event, DoneEvent):
                    outcome = event.done_reason
                    total_ns = time.perf_counter_ns() - started
                    if not aggregate:
                        answer = _Answer()
                    yield call.final(answer, event, total_ns=total_ns, load_ns=load_ns)
                elif _carries_something(event):
                    n_chunks += 1
                    if aggregate:
                        answer.add(event)
                    else:
                        yield call.chunk(
                            event.text,
                            thinking=event.thinking,
                            calls=event.tool_calls,
                            probs=event.logprobs,
                        )
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
