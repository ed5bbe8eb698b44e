"""Typed, versioned wire messages: the job on a model stream and the chunk events on a
request's token channel. JSON via orjson; never pickle.

Ollama's field names (``eval_count``, durations in ns) are not used here; the API renders
them from these events (``api.ollama``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.errors import ErrorType

WIRE_VERSION: Literal[1] = 1


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ChatMessage(_Wire):
    role: str
    content: str = ""
    images: list[str] | None = None


class SamplingOptions(_Wire):
    """The runtime options passed to llama.cpp; ``None`` means the engine's default."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    num_predict: int | None = None
    repeat_penalty: float | None = None


class GenerateJob(_Wire):
    """One inference request, as XADDed to ``keys.job_stream(model)``."""

    v: Literal[1] = WIRE_VERSION
    request_id: str
    model: str
    kind: Literal["chat", "generate"]
    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    context: list[int] | None = None
    options: SamplingOptions = Field(default_factory=SamplingOptions)
    enqueued_at_ms: int
    deadline_ms: int

    def to_fields(self) -> dict[str, bytes]:
        return {"job": orjson.dumps(self.model_dump(exclude_none=True))}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> GenerateJob:
        return cls.model_validate_json(fields[b"job"])


class _Event(_Wire):
    request_id: str
    #: Delivery attempt of the job (1 on first run); events of an older attempt are stale.
    attempt: int = 1
    #: 0, 1, 2, ... within an attempt; a gap means lost chunks.
    seq: int


class StartedEvent(_Event):
    type: Literal["started"] = "started"
    worker_id: str
    #: Time from enqueue until the worker took the job (queue wait plus model load).
    load_ns: int = 0


class TokenEvent(_Event):
    type: Literal["token"] = "token"
    text: str


class DoneEvent(_Event):
    type: Literal["done"] = "done"
    done_reason: Literal["stop", "length"]
    n_prompt_tokens: int
    n_decoded: int
    prompt_eval_ns: int
    eval_ns: int
    #: Token ids of prompt and response (for /api/generate's ``context``).
    context: list[int] | None = None


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    error_type: ErrorType
    message: str


ChunkEvent = Annotated[
    StartedEvent | TokenEvent | DoneEvent | ErrorEvent, Field(discriminator="type")
]
_CHUNK = TypeAdapter(ChunkEvent)


def encode_event(event: StartedEvent | TokenEvent | DoneEvent | ErrorEvent) -> bytes:
    return orjson.dumps(event.model_dump(exclude_none=True))


def decode_event(data: bytes | str) -> StartedEvent | TokenEvent | DoneEvent | ErrorEvent:
    return _CHUNK.validate_json(data)


class DeviceInfo(_Wire):
    """One accelerator (or the host's RAM in CPU mode) as a worker sees it."""

    kind: Literal["gpu", "cpu"]
    name: str
    uuid: str | None = None
    total_bytes: int
    free_bytes: int


class ModelAdvert(_Wire):
    """A model a worker holds loaded, with what /api/tags and /api/ps show of it."""

    name: str
    size_bytes: int = 0
    digest: str = ""
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int = 0
    modified_at: str = ""


class WorkerAdvert(_Wire):
    """What a worker writes to ``keys.worker_key`` on every heartbeat."""

    v: Literal[1] = WIRE_VERSION
    worker_id: str
    host: str
    version: str
    engine: str
    devices: list[DeviceInfo]
    models: list[ModelAdvert]
    slots_total: int
    slots_free: int
    ready: bool
    started_at: str
