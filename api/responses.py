"""Step 3 of a request: its answer in Ollama's shapes.

This is the only module that knows Ollama's response field names (``eval_count``,
durations in nanoseconds, ``done_reason``); everything before it speaks
``shared.messages``. The /v1 layer translates these same native objects. Errors follow
the rule of ``api.errors``: a status before the first byte, one final line after it;
``stream: false`` reads the same objects to the end.
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.aliases import Entry
from api.dispatch import Dispatcher, load_time, run_once, stamp
from api.errors import as_herd_error, ndjson_response, unless_disconnected
from api.requests import Call, EmbedCall, Load, Unload
from shared.errors import HerdError
from shared.messages import (
    DoneEvent,
    GenerateJob,
    Logprob,
    ModelAdvert,
    StartedEvent,
    TokenEvent,
    ToolCall,
)

T = TypeVar("T")

log = structlog.get_logger()

# -- Ollama's shapes -------------------------------------------------------------------


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with trimmed fractional seconds, as Go prints ``time.Time``."""
    if moment is None:
        return _now()
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return f"{text}Z"


#: The last whole second formatted (every chunk has a timestamp: strftime each time was a
#: few percent of the API's CPU per token).
_second: tuple[int, str] = (-1, "")


def _now() -> str:
    global _second
    micros = time.time_ns() // 1000
    seconds, fraction = divmod(micros, 1_000_000)
    if _second[0] != seconds:
        moment = datetime.fromtimestamp(seconds, UTC)
        _second = (seconds, moment.strftime("%Y-%m-%dT%H:%M:%S"))
    digits = f"{fraction:06d}".rstrip("0")
    return f"{_second[1]}.{digits}Z" if digits else f"{_second[1]}Z"


NEVER = datetime.min.replace(tzinfo=UTC)


def parse_time(text: str) -> datetime:
    """RFC 3339 with up to 9 fractional digits (Python reads 6); unknown sorts last."""
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[:digits][:6] + rest[digits:]
        text = f"{head}.{rest}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return NEVER
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def metrics(done: DoneEvent, *, total_ns: int, load_ns: int) -> dict[str, int]:
    """The final chunk's metrics; zero values are left out (Go's omitempty)."""
    fields = {
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": done.n_prompt_tokens,
        "prompt_eval_duration": done.prompt_eval_ns,
        "eval_count": done.n_decoded,
        "eval_duration": done.eval_ns,
    }
    return {key: value for key, value in fields.items() if value}


_ID_CHARS = string.ascii_lowercase + string.digits


def tool_call_id() -> str:
    """``call_`` and 8 random characters, as Ollama names a tool call without an id."""
    return "call_" + "".join(random.choices(_ID_CHARS, k=8))


def tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Tool calls in Ollama's order of fields; ``arguments`` stays an object."""
    return [
        {
            "id": call.id or tool_call_id(),
            "function": {
                "index": call.function.index,
                "name": call.function.name,
                "arguments": call.function.arguments,
            },
        }
        for call in calls
    ]


def logprobs(entries: list[Logprob]) -> list[dict[str, Any]]:
    return [entry.model_dump(exclude_none=True) for entry in entries]


def generate_chunk(
    model: str,
    text: str,
    *,
    thinking: str = "",
    calls: list[ToolCall] | None = None,
    probs: list[Logprob] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "created_at": timestamp(), "response": text}
    body.update(_said(thinking, calls), done=False)
    return _with_logprobs(body, probs)


def chat_chunk(
    model: str,
    text: str,
    *,
    thinking: str = "",
    calls: list[ToolCall] | None = None,
    probs: list[Logprob] | None = None,
) -> dict[str, Any]:
    message = {"role": "assistant", "content": text, **_said(thinking, calls)}
    body = {"model": model, "created_at": timestamp(), "message": message, "done": False}
    return _with_logprobs(body, probs)


def _said(thinking: str, calls: list[ToolCall] | None) -> dict[str, Any]:
    """Thinking and tool calls, left out when empty (omitempty)."""
    fields: dict[str, Any] = {}
    if thinking:
        fields["thinking"] = thinking
    if calls:
        fields["tool_calls"] = tool_calls(calls)
    return fields


def _with_logprobs(body: dict[str, Any], probs: list[Logprob] | None) -> dict[str, Any]:
    if probs:
        body["logprobs"] = logprobs(probs)
    return body


def control_response(model: str, *, chat: bool, reason: str) -> dict[str, Any]:
    """The answer to a load (empty prompt) or unload (``keep_alive: 0``) request."""
    body: dict[str, Any] = {"model": model, "created_at": timestamp()}
    if chat:
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    body.update(done=True, done_reason=reason)
    return body


def details(advert: ModelAdvert | None, *, lengths: bool = False) -> dict[str, Any]:
    """``api.ModelDetails``; ``lengths`` adds the newer context and embedding lengths."""
    if advert is None:
        advert = ModelAdvert(name="")
    body: dict[str, Any] = {
        "parent_model": "",
        "format": advert.format,
        "family": advert.family,
        # a store model's config names its families; a loose GGUF's are its architecture
        "families": (
            advert.families
            if advert.families is not None
            else ([advert.family] if advert.family else None)
        ),
        "parameter_size": advert.parameter_size,
        "quantization_level": advert.quantization_level,
    }
    if lengths and advert.context_length:
        body["context_length"] = advert.context_length
    if lengths and advert.embedding_length:
        body["embedding_length"] = advert.embedding_length
    return body


def control_answer(action: Load | Unload) -> dict[str, Any]:
    """The one object a load or unload request is answered with, in its route's shape."""
    reason = "load" if isinstance(action, Load) else "unload"
    if action.route == "embed":
        return {"model": action.model, "embeddings": []}
    if action.route == "embeddings":
        return {"embedding": []}
    return control_response(action.model, chat=action.route == "chat", reason=reason)


def tags(entries: list[Entry]) -> dict[str, list[dict[str, Any]]]:
    """``/api/tags``: every name a client can use, newest first (``/v1/models`` too)."""
    ordered = sorted(entries, key=lambda e: e.name)
    ordered.sort(key=lambda e: parse_time(e.advert.modified_at), reverse=True)
    return {"models": [_tag(entry) for entry in ordered]}


def _tag(entry: Entry) -> dict[str, Any]:
    advert = entry.advert
    body: dict[str, Any] = {
        "name": entry.name,
        "model": entry.name,
        "modified_at": advert.modified_at,
        "size": advert.size_bytes,
        "digest": advert.digest,
        "details": details(advert, lengths=True),
    }
    if advert.capabilities:
        body["capabilities"] = list(advert.capabilities)
    return body


# -- a call's answer: chunks, or one aggregated object ----------------------------------


def chunk(
    call: Call,
    text: str,
    *,
    thinking: str = "",
    calls: list[ToolCall] | None = None,
    probs: list[Logprob] | None = None,
) -> dict[str, Any]:
    render = chat_chunk if call.kind == "chat" else generate_chunk
    return render(call.model, text, thinking=thinking, calls=calls, probs=probs)


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


def final(
    call: Call, answer: _Answer, done: DoneEvent, *, total_ns: int, load_ns: int
) -> dict[str, Any]:
    """The last object: what ``answer`` holds (nothing when streamed), then the metrics."""
    text, thinking = answer.text(), answer.thinking()
    body = chunk(call, text, thinking=thinking, calls=answer.calls, probs=answer.probs)
    probs = body.pop("logprobs", None)
    calls = body.pop("tool_calls", None)  # generate: after the metrics, as Ollama orders
    body.update(done=True, done_reason=done.done_reason)
    if call.kind == "generate" and not call.job.raw and done.context is not None:
        body["context"] = done.context
    body.update(metrics(done, total_ns=total_ns, load_ns=load_ns))
    if calls:
        body["tool_calls"] = calls
    if probs:
        body["logprobs"] = probs
    return body


def objects(
    dispatcher: Dispatcher, call: Call, *, queue_timeout_s: float, aggregate: bool = False
) -> AsyncGenerator[dict[str, Any]]:
    """Run ``call``; its answer as native Ollama objects: the streamed chunks, or (with
    ``aggregate``) the one ``stream: false`` object. Errors before the first object raise
    ``HerdError``; the /v1 layer translates these same objects."""
    return _objects(dispatcher, call, stamp(call.job, queue_timeout_s), aggregate=aggregate)


def _carries_something(event: TokenEvent) -> bool:
    return bool(event.text or event.thinking or event.tool_calls or event.logprobs)


async def _objects(
    dispatcher: Dispatcher, call: Call, job: GenerateJob, *, aggregate: bool
) -> AsyncGenerator[dict[str, Any]]:
    started = time.perf_counter_ns()
    load_ns, n_chunks, outcome, worker = 0, 0, "cancelled", ""
    first_ns = 0  # when the first chunk came: the request's time to first token
    done: DoneEvent | None = None
    answer = _Answer()
    try:
        async with dispatcher.submit(job) as events:
            async for event in events:
                if isinstance(event, StartedEvent):
                    load_ns, worker = load_time(started, event), event.worker_id
                elif isinstance(event, DoneEvent):
                    outcome, done = event.done_reason, event
                    total_ns = time.perf_counter_ns() - started
                    if not aggregate:
                        answer = _Answer()
                    yield final(call, answer, event, total_ns=total_ns, load_ns=load_ns)
                elif _carries_something(event):
                    n_chunks += 1
                    first_ns = first_ns or time.perf_counter_ns()
                    if aggregate:
                        answer.add(event)
                    else:
                        yield chunk(
                            call,
                            event.text,
                            thinking=event.thinking,
                            calls=event.tool_calls,
                            probs=event.logprobs,
                        )
    except HerdError as exc:
        outcome = exc.error_type.value
        raise
    except Exception as exc:
        outcome = as_herd_error(exc).error_type.value
        raise
    finally:
        log.info(
            "request_finished",
            kind=call.kind,
            worker_id=worker,
            outcome=outcome,
            chunks=n_chunks,
            load_ms=load_ns // 1_000_000,
            ttft_ms=(first_ns - started) // 1_000_000 if first_ns else None,
            prompt_tokens=done.n_prompt_tokens if done else None,
            eval_tokens=done.n_decoded if done else None,
            eval_ms=done.eval_ns // 1_000_000 if done else None,
            total_ms=(time.perf_counter_ns() - started) // 1_000_000,
        )


async def respond(
    request: Request, dispatcher: Dispatcher, call: Call, *, stream: bool, queue_timeout_s: float
) -> Response:
    """``/api/chat`` and ``/api/generate``'s answer: NDJSON chunks, or one JSON object."""
    answer = objects(dispatcher, call, queue_timeout_s=queue_timeout_s, aggregate=not stream)
    if stream:
        return await ndjson_response(request, answer)
    last = await unless_disconnected(request, anext(answer))
    await answer.aclose()
    return JSONResponse(last)


async def embed(
    dispatcher: Dispatcher, call: EmbedCall, *, queue_timeout_s: float
) -> dict[str, Any]:
    """Run ``call``: Ollama's ``/api/embed`` (or, legacy, ``/api/embeddings``) answer."""
    started = time.perf_counter_ns()
    done, load_ns = await run_once(dispatcher, stamp(call.job, queue_timeout_s))
    vectors = done.embeddings or []
    if call.legacy:
        return {"embedding": vectors[0] if vectors else []}
    body: dict[str, Any] = {"model": call.model, "embeddings": vectors}
    counts = {
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": load_ns,
        "prompt_eval_count": done.n_prompt_tokens,
    }
    body.update({key: value for key, value in counts.items() if value})
    return body
