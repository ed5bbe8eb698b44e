"""Ollama's wire shapes: request bodies in, response objects out.

This is the only module that knows Ollama's field names (``eval_count``, durations in
nanoseconds, ``done_reason``); everything else speaks ``shared.messages``. Fields that
Ollama checks with its own texts (``options``, ``think``, ``format``, ``keep_alive``,
images) are typed loosely here and checked in ``api.options``.
"""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from shared.errors import InvalidRequest
from shared.messages import (
    ChatMessage,
    DoneEvent,
    Logprob,
    ModelAdvert,
    ToolCall,
    ToolCallFunction,
)


class _Request(BaseModel):
    # unknown fields are ignored, never rejected (Ollama's decoder does the same)
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    stream: StrictBool | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None
    think: Any = None
    truncate: StrictBool | None = None
    shift: StrictBool | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None

    @property
    def streaming(self) -> bool:
        # `stream` absent means true (a Go pointer)
        return self.stream is not False


class GenerateRequest(_Request):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[StrictInt] | None = None
    raw: StrictBool | None = None
    images: list[str] | None = None


class RequestFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    index: StrictInt | None = None
    name: str | None = None
    arguments: Any = None


class RequestToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    function: RequestFunction = Field(default_factory=RequestFunction)

    def wire(self) -> ToolCall:
        arguments = self.function.arguments
        if isinstance(arguments, str):  # tolerated: some clients send the JSON text
            try:
                arguments = orjson.loads(arguments) if arguments.strip() else {}
            except orjson.JSONDecodeError:
                arguments = None
        if arguments is not None and not isinstance(arguments, dict):
            raise InvalidRequest("tool call arguments must be a JSON object")
        function = ToolCallFunction(
            name=self.function.name or "",
            arguments=arguments or {},
            index=self.function.index or 0,
        )
        return ToolCall(id=self.id or "", function=function)


class ChatRequestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str | None = None
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[RequestToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    def wire(self) -> ChatMessage:
        return ChatMessage(
            role=(self.role or "").lower(),  # Ollama lowercases roles on input
            content=self.content or "",
            images=self.images or None,
            thinking=self.thinking or None,
            tool_calls=[call.wire() for call in self.tool_calls] if self.tool_calls else None,
            tool_name=self.tool_name or None,
            tool_call_id=self.tool_call_id or None,
        )


class ChatRequest(_Request):
    messages: list[ChatRequestMessage] | None = None
    tools: list[dict[str, Any]] | None = None

    def wire_messages(self) -> list[ChatMessage]:
        return [m.wire() for m in self.messages or []]


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with trimmed fractional seconds, as Go prints ``time.Time``."""
    moment = moment or datetime.now(UTC)
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return f"{text}Z"


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
        "format": "gguf",
        "family": advert.family,
        "families": [advert.family] if advert.family else None,
        "parameter_size": advert.parameter_size,
        "quantization_level": advert.quantization_level,
    }
    if lengths and advert.context_length:
        body["context_length"] = advert.context_length
    if lengths and advert.embedding_length:
        body["embedding_length"] = advert.embedding_length
    return body
