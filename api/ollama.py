"""Ollama's wire shapes: request bodies in, response objects out.

This is the only module that knows Ollama's field names (``eval_count``, durations in
nanoseconds, ``done_reason``); everything else speaks ``shared.messages``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidRequest
from shared.messages import ChatMessage, DoneEvent, SamplingOptions


class _Request(BaseModel):
    # unknown fields are ignored, never rejected (Ollama's decoder does the same)
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    stream: bool | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    think: bool | str | None = None

    @property
    def streaming(self) -> bool:
        # `stream` absent means true (a Go pointer)
        return self.stream is not False


class GenerateRequest(_Request):
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class ChatRequestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str = ""
    images: list[str] | None = None


class ChatRequest(_Request):
    messages: list[ChatRequestMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None

    def wire_messages(self) -> list[ChatMessage]:
        return [
            ChatMessage(role=m.role.lower(), content=m.content, images=m.images)
            for m in self.messages
        ]


# numeric options passed to llama.cpp -> Ollama's type name, for the error text
_OPTION_TYPES: dict[str, str] = {
    "temperature": "float32",
    "top_p": "float32",
    "min_p": "float32",
    "repeat_penalty": "float32",
    "top_k": "int",
    "seed": "int",
    "num_predict": "int",
}
_INT_OPTIONS = {"top_k", "seed", "num_predict"}


def sampling_options(options: dict[str, Any] | None) -> SamplingOptions:
    """Ollama's ``Options.FromMap``: known keys type-checked, unknown keys ignored."""
    if not options:
        return SamplingOptions()
    values: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "stop":
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise InvalidRequest('option "stop" must be of type []string')
            values["stop"] = value
            continue
        type_name = _OPTION_TYPES.get(key)
        if type_name is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f'option "{key}" must be of type {type_name}')
        values[key] = int(value) if key in _INT_OPTIONS else float(value)
    return SamplingOptions(**values)


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with trimmed fractional seconds, as Go prints ``time.Time``."""
    moment = moment or datetime.now(UTC)
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return f"{text}Z"


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


def generate_chunk(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "created_at": timestamp(), "response": text, "done": False}


def chat_chunk(model: str, text: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": timestamp(),
        "message": {"role": "assistant", "content": text},
        "done": False,
    }


def control_response(model: str, *, chat: bool, reason: str) -> dict[str, Any]:
    """The answer to a load (empty prompt) or unload (``keep_alive: 0``) request."""
    body: dict[str, Any] = {"model": model, "created_at": timestamp()}
    if chat:
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    body.update(done=True, done_reason=reason)
    return body
