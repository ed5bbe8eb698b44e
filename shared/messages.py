"""Typed, versioned wire messages: the job on a model stream and the chunk events on a
request's token channel. JSON via orjson; never pickle.

Ollama's field names (``eval_count``, durations in ns) are not used here; the API renders
them from these events (``api.responses``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared import thinking
from shared.errors import ErrorType

WIRE_VERSION: Literal[1] = 1


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ToolCallFunction(_Wire):
    name: str
    #: A JSON object (never a string), key order kept.
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: int = 0


class ToolCall(_Wire):
    id: str = ""
    function: ToolCallFunction


class ChatMessage(_Wire):
    role: str
    content: str = ""
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class SamplingOptions(_Wire):
    """The runtime options passed to llama.cpp; ``None`` means the engine's default."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    num_predict: int | None = None
    num_keep: int | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class LoadOptions(_Wire):
    """Options fixed when a model is loaded; a job asking for other values reloads it."""

    num_ctx: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int | None = None


class TopLogprob(_Wire):
    token: str
    logprob: float
    bytes: list[int] | None = None


class Logprob(TopLogprob):
    top_logprobs: list[TopLogprob] | None = None


class GenerateJob(_Wire):
    """One inference request, as XADDed to ``keys.job_stream(model)``."""

    v: Literal[1] = WIRE_VERSION
    request_id: str
    model: str
    #: ``load`` only loads the model (Ollama's empty-prompt request) and answers done "load".
    kind: Literal["chat", "generate", "embed", "load"]
    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    #: A prompt template overriding the model's (Ollama's Go-template syntax).
    template: str | None = None
    raw: bool = False
    context: list[int] | None = None
    images: list[str] | None = None
    #: ``"json"`` or a JSON-schema object: the output is constrained with a grammar.
    format: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    #: ``True``/``False`` or a level (``low``, ``medium``, ``high``, ``max``); None: model default.
    think: bool | str | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool | None = None
    shift: bool | None = None
    #: Seconds the model stays loaded once idle; negative: forever; None: unchanged.
    keep_alive_s: float | None = None
    options: SamplingOptions = Field(default_factory=SamplingOptions)
    load: LoadOptions = Field(default_factory=LoadOptions)
    #: /api/embed: the texts to embed, their vectors cut to ``dimensions`` and L2-normalised.
    inputs: list[str] = Field(default_factory=list)
    dimensions: int | None = None
    normalize: bool = True
    enqueued_at_ms: int
    deadline_ms: int
    #: The request's id as its client sees it (``X-Request-ID``, kept or made by the API):
    #: every log line of the job carries it.
    trace_id: str | None = None
    #: A continuation (set by the worker that takes over, never sent by the API): the
    #: answer's tokens so far, which the engine reads after the prompt and goes on from.
    resume: list[int] | None = None

    def continuable(self) -> bool:
        """Whether another worker can go on with the answer where a dead one stopped: its
        chunks are the model's text as it comes (no tools, format, thinking or logprobs,
        whose parsers and samplers keep state a token list does not restore)."""
        return (
            self.kind in ("chat", "generate")
            and not self.tools
            and self.format is None
            and not self.logprobs
            and not thinking.requested(self.think)
        )

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
    #: A continuation: the answer's tokens already sent (by a worker that died), which
    #: this attempt goes on from (0: from the start).
    resumed_at: int = 0


class TokenEvent(_Event):
    type: Literal["token"] = "token"
    text: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] | None = None
    logprobs: list[Logprob] | None = None
    #: The answer's tokens generated up to this chunk, over every attempt (a continuation
    #: goes on from the last count its client received).
    covered: int = 0


class DoneEvent(_Event):
    type: Literal["done"] = "done"
    done_reason: Literal["stop", "length", "load"]
    n_prompt_tokens: int
    n_decoded: int
    prompt_eval_ns: int
    eval_ns: int
    #: Token ids of prompt and response (for /api/generate's ``context``).
    context: list[int] | None = None
    #: An embed job's vectors, in input order.
    embeddings: list[list[float]] | None = None


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
    """A model a worker can serve, with what /api/tags and /api/show show of it."""

    name: str
    size_bytes: int = 0
    digest: str = ""
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int = 0
    embedding_length: int = 0
    modified_at: str = ""
    #: Ollama's capability names: completion, tools, insert, vision, embedding, thinking.
    capabilities: list[str] = Field(default_factory=lambda: ["completion"])
    #: The chat template's source text (Jinja from the GGUF, or a built-in format's name).
    template: str = ""
    #: Modelfile-style parameters (``stop`` strings and the like): name -> values.
    parameters: dict[str, list[Any]] = Field(default_factory=dict)
    license: str = ""
    #: A store model's license texts, one per layer (``license`` joins them).
    licenses: list[str] = Field(default_factory=list)
    #: The model's format and families (a store model's config blob says; else
    #: ``"gguf"`` and ``[family]``).
    format: str = "gguf"
    families: list[str] | None = None
    #: A Modelfile's ``SYSTEM`` and ``MESSAGE``s (store models).
    system: str = ""
    messages: list[ChatMessage] = Field(default_factory=list)
    #: GGUF key-value metadata, arrays longer than 5 items shortened to ``[]``
    #: (the full set is at ``keys.model_info(digest)``).
    model_info: dict[str, Any] = Field(default_factory=dict)
    #: Memory a load with default options takes on the advertising worker (an estimate:
    #: weights, KV cache for num_ctx x slots, compute buffers, margin); 0: unknown.
    memory_bytes: int = 0


class LoadedModel(_Wire):
    """A model resident on a worker right now (what /api/ps lists)."""

    name: str
    size_bytes: int
    size_vram: int = 0
    context_length: int = 0
    #: RFC 3339; when the idle model unloads (far future for "forever").
    expires_at: str
    #: Requests running or queued on it, and how many it runs at once (batched).
    busy: int = 0
    slots: int = 1
    #: Seconds since its last request ended (0 while busy).
    idle_s: float = 0.0


class WorkerAdvert(_Wire):
    """What a worker writes to ``keys.worker_key`` on every heartbeat."""

    v: Literal[1] = WIRE_VERSION
    worker_id: str
    host: str
    version: str
    engine: str
    devices: list[DeviceInfo]
    #: Models this worker can serve (loaded or not).
    models: list[ModelAdvert]
    #: Models loaded in memory now.
    loaded: list[LoadedModel] = Field(default_factory=list)
    slots_total: int
    slots_free: int
    ready: bool
    started_at: str
    #: Bytes of device memory this worker lets models fill, and how much of that no
    #: loaded model takes now (by estimate, never more than the devices report free).
    memory_total: int = 0
    memory_free: int = 0
    #: Models this worker is loading now (placement counts them as replicas to be).
    loading: list[str] = Field(default_factory=list)
    #: Most models it keeps loaded at once (HERD_MAX_LOADED_MODELS).
    max_loaded: int = 0
    #: Answer tokens this worker generated since it started, by model (rates come from
    #: two reads: the status page, ``herd top``).
    tokens_generated: dict[str, int] = Field(default_factory=dict)


class ReplicaPolicy(_Wire):
    """How many workers keep a model loaded (``herd scale``): at least ``min_replicas``
    always (loaded without demand, never unloaded), at most ``max_replicas`` (None: as
    many as demand and memory allow)."""

    min_replicas: int = Field(0, ge=0)
    max_replicas: int | None = Field(None, ge=1)


class ControlMessage(_Wire):
    """A message on a worker's control stream (``keys.control_stream``)."""

    v: Literal[1] = WIRE_VERSION
    action: Literal["unload"]
    model: str

    def to_fields(self) -> dict[str, bytes]:
        return {"ctl": orjson.dumps(self.model_dump())}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> ControlMessage:
        return cls.model_validate_json(fields[b"ctl"])
