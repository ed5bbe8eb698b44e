"""Step 1 of a request: its body, decoded and checked in Ollama's order. Pure: no I/O.

A route reads the body, looks the model up (``Aliases.lookup``) and hands both here; what
comes back says what to do:

- ``Call`` / ``EmbedCall``: a job to run for an answer (``api.dispatch``, then
  ``api.responses``);
- ``Load`` / ``Unload``: nothing to generate, so load the model or (``keep_alive: 0``)
  unload it everywhere (``api.control``), answered with one object.

The checks run in the order Ollama's handlers run them, so a request with several faults
gets the error an Ollama server would give: decoding (think, keep_alive, base64 images),
``top_logprobs``, the model name, unload, raw mode, thinking, capabilities, options, load,
format. The model is looked up before the checks (a cached read), but a missing one fails
only at its place in that order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from api import fields, gofmt
from shared import names, thinking
from shared.errors import (
    BAD_CONTEXT_TOKEN,
    MODEL_REQUIRED,
    HerdError,
    InvalidRequest,
    ModelNotFound,
)
from shared.messages import (
    ChatMessage,
    GenerateJob,
    LoadOptions,
    ModelAdvert,
    SamplingOptions,
    ToolCall,
    ToolCallFunction,
)

M = TypeVar("M", bound=BaseModel)

# -- reading a body -------------------------------------------------------------------

_GO_TYPES = {
    "string_type": "string",
    "bool_type": "bool",
    "int_type": "int",
    "float_type": "float64",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
}


#: Arrays and objects nest at most this deep in a body (``format`` and ``tools`` are free
#: JSON): deeper ones are a 400 before anything recurses into them (orjson encodes 255
#: levels at most, so a deeper ``format`` used to fail as a 500 when the job was sent).
MAX_DEPTH = 64


def parse(raw: bytes, model: type[M]) -> M:
    """A JSON body bound to ``model``, with Ollama's 400 texts for missing or bad bodies.

    Two refusals Ollama does not make: arrays and objects nested deeper than ``MAX_DEPTH``,
    and a key given twice in one object (Go and orjson take the last; a proxy or an
    audit log reading the first would see another request than the one served)."""
    if not raw.strip():
        raise InvalidRequest("missing request body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON: {exc}") from exc
    check_depth(data)
    check_unique_keys(raw)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {_kind(data)} into Go value of type api.{model.__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        # Go names the field path without list indexes (ChatRequest.messages.content)
        path = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        want = _GO_TYPES.get(error["type"], error["type"])
        raise InvalidRequest(
            f"json: cannot unmarshal {_kind(error.get('input'))} into Go struct field "
            f"{model.__name__}.{path} of type {want}"
        ) from exc


def check_depth(data: object, limit: int = MAX_DEPTH) -> None:
    """400 if arrays and objects nest deeper than ``limit`` (the body itself is level 1);
    a walk with a stack of its own, so no depth can exhaust Python's."""
    if not isinstance(data, dict | list):
        return
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, dict | list):
                if depth >= limit:
                    raise InvalidRequest(
                        f"exceeded max depth: arrays and objects nest at most {limit} levels"
                    )
                stack.append((child, depth + 1))


def _unique(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1 and len({key for key, _ in pairs}) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRequest(f"json: duplicate key {gofmt.quote(key)}")
            seen.add(key)


def check_unique_keys(raw: bytes) -> None:
    """400 if an object of ``raw`` (valid JSON, at most ``MAX_DEPTH`` deep) has a key twice;
    keys are compared as decoded (``"mod\\u0065l"`` is ``"model"``)."""
    if b"{" in raw:
        try:
            json.loads(raw, object_pairs_hook=_unique)
        except ValueError as exc:  # what orjson read, json should too: never a 500
            raise InvalidRequest(f"invalid JSON: {exc}") from exc


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


# -- the request models (Ollama's field names; loosely typed fields checked below) -----


class _Body(BaseModel):
    # unknown fields are ignored, never rejected (Ollama's decoder does the same)
    model_config = ConfigDict(extra="ignore")


class _Request(_Body):
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


class RequestFunction(_Body):
    index: StrictInt | None = None
    name: str | None = None
    arguments: Any = None


class RequestToolCall(_Body):
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


class ChatRequestMessage(_Body):
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


class EmbedRequest(_Body):
    model: str = ""
    input: Any = None
    truncate: StrictBool | None = None
    dimensions: StrictInt | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


class EmbeddingRequest(_Body):
    """The legacy request: one ``prompt``, one vector back, not normalised."""

    model: str = ""
    prompt: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


class ShowRequest(_Body):
    model: str = ""
    name: str = ""  # deprecated spelling of ``model``
    verbose: StrictBool | None = None
    system: str | None = None
    options: dict[str, Any] | None = None


class CopyRequest(_Body):
    source: str = ""
    destination: str = ""


class DeleteRequest(_Body):
    model: str = ""
    name: str = ""  # deprecated spelling of ``model``


class RegistryRequest(_Body):
    """``/api/pull`` and ``/api/push`` (``username``/``password``: deprecated, ignored)."""

    model: str = ""
    name: str = ""  # deprecated spelling of ``model``
    insecure: StrictBool | None = None
    stream: StrictBool | None = None


# -- what a checked request asks for --------------------------------------------------

Route = Literal["generate", "chat", "embed", "embeddings"]


def job(**values: Any) -> GenerateJob:
    """A job with everything but its id and times (``dispatch.stamp`` adds them per run,
    so the same checked call can be run again)."""
    return GenerateJob(request_id="", enqueued_at_ms=0, deadline_ms=0, **values)


@dataclass(frozen=True)
class Call:
    """A chat or generate job to run; its answer is streamed or aggregated."""

    kind: Literal["chat", "generate"]
    model: str  # as the client sent it (echoed back)
    name: str  # the served model (its stream's key)
    job: GenerateJob


@dataclass(frozen=True)
class EmbedCall:
    """An embed job to run; answered with one object."""

    model: str  # as the client sent it (echoed back)
    job: GenerateJob
    legacy: bool = False  # /api/embeddings: one vector, not normalised


@dataclass(frozen=True)
class Load:
    """Nothing to generate or embed: load the model, answer once a worker has it."""

    route: Route
    model: str  # as the client sent it (echoed back)
    job: GenerateJob  # of kind ``load``


@dataclass(frozen=True)
class Unload:
    """``keep_alive: 0`` and nothing to generate: unload the model wherever it is loaded."""

    route: Literal["generate", "chat"]
    model: str  # as the client sent it (echoed back)
    name: str  # the served model


# -- the checks, in Ollama's order ----------------------------------------------------


def check_top_logprobs(value: int | None) -> int:
    if value is not None and not 0 <= value <= 20:
        raise InvalidRequest("top_logprobs must be between 0 and 20")
    return value or 0


def check_name(model: str, advert: ModelAdvert | None, *, missing: HerdError) -> str:
    """The normalised name of a model that ``advert`` serves; 400 if invalid, else
    ``missing`` when nothing serves it."""
    name = names.normalize(model)
    if advert is None:
        raise missing
    return name


def vocab_size(advert: ModelAdvert) -> int | None:
    """The model's vocabulary size, if its advert tells (``<arch>.vocab_size``, or the token
    list when it was short enough to be advertised); the worker checks the rest."""
    info = advert.model_info
    size = info.get(f"{info.get('general.architecture', '')}.vocab_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    tokens = info.get("tokenizer.ggml.tokens")
    return len(tokens) if isinstance(tokens, list) and tokens else None


def check_context(context: list[int] | None, advert: ModelAdvert) -> None:
    """``context`` holds token ids: none negative, none past the vocabulary (when known)."""
    if not context:
        return
    limit = vocab_size(advert)
    for token in context:
        if token < 0 or (limit is not None and token >= limit):
            raise InvalidRequest(BAD_CONTEXT_TOKEN.format(token=token))


def check_thinking(advert: ModelAdvert, model: str, think: thinking.Think) -> None:
    if "thinking" not in advert.capabilities and thinking.requested(think):
        raise InvalidRequest(f"{gofmt.quote(model)} does not support thinking")


def check_capabilities(
    advert: ModelAdvert, name: str, model: str, *, verb: str, wants: list[str]
) -> None:
    """``CheckCapabilities``: completion is reported on its own with the route's verb."""
    if "completion" not in advert.capabilities:
        raise InvalidRequest(f"{gofmt.quote(model)} does not support {verb}")
    missing = [cap for cap in wants if cap not in advert.capabilities]
    if missing:
        # the fully qualified name, as Ollama's CheckCapabilities words it
        full = names.parse(name).full()
        raise InvalidRequest(f"{full} does not support " + "\n".join(missing))


def _load_job(advert: ModelAdvert, load: LoadOptions, keep_alive_s: float | None) -> GenerateJob:
    return job(model=advert.name, kind="load", load=load, keep_alive_s=keep_alive_s)


def _generation_fields(
    body: GenerateRequest | ChatRequest,
    think: thinking.Think,
    top_logprobs: int,
    keep_alive_s: float | None,
    sampling: SamplingOptions,
    load: LoadOptions,
) -> dict[str, Any]:
    """The job fields chat and generate share; ``format`` is the last check."""
    return {
        "format": fields.parse_format(body.format),
        "think": think,
        "logprobs": bool(body.logprobs),
        "top_logprobs": top_logprobs,
        "truncate": body.truncate,
        "shift": body.shift,
        "keep_alive_s": keep_alive_s,
        "options": sampling,
        "load": load,
    }


def generate_call(body: GenerateRequest, advert: ModelAdvert | None) -> Call | Load | Unload:
    """``/api/generate``'s checks; ``advert`` is what ``body.model`` names (None: nothing)."""
    think = fields.parse_think(body.think)
    keep_alive_s = fields.keep_alive(body.keep_alive)
    images = fields.check_images(body.images)
    top_logprobs = check_top_logprobs(body.top_logprobs)
    if not body.model:
        raise ModelNotFound.named("")
    name = check_name(body.model, advert, missing=ModelNotFound.named(body.model))
    assert advert is not None  # check_name raised otherwise
    prompt = body.prompt or ""
    if not prompt and keep_alive_s == 0:
        return Unload(route="generate", model=body.model, name=advert.name)
    if body.raw and (body.template or body.system or body.context):
        raise InvalidRequest("raw mode does not support template, system, or context")
    check_context(body.context, advert)
    check_thinking(advert, body.model, think)
    wants = ["insert"] if body.suffix else []
    if prompt and images:
        wants.append("vision")
    check_capabilities(advert, name, body.model, verb="generate", wants=wants)
    sampling, load = fields.parse_options(body.options)
    if not prompt:
        return Load(route="generate", model=body.model, job=_load_job(advert, load, keep_alive_s))
    generate = job(
        model=advert.name,
        kind="generate",
        prompt=prompt,
        suffix=body.suffix or "",
        system=body.system or None,
        template=body.template or None,
        raw=bool(body.raw),
        context=body.context or None,
        images=images,
        **_generation_fields(body, think, top_logprobs, keep_alive_s, sampling, load),
    )
    return Call(kind="generate", model=body.model, name=advert.name, job=generate)


def chat_call(body: ChatRequest, advert: ModelAdvert | None) -> Call | Load | Unload:
    """``/api/chat``'s checks; ``advert`` is what ``body.model`` names (None: nothing)."""
    think = fields.parse_think(body.think)
    keep_alive_s = fields.keep_alive(body.keep_alive)
    messages = body.wire_messages()
    for message in messages:
        fields.check_images(message.images)
    top_logprobs = check_top_logprobs(body.top_logprobs)
    if not body.model:
        raise InvalidRequest(MODEL_REQUIRED)
    name = check_name(body.model, advert, missing=ModelNotFound.named(body.model))
    assert advert is not None  # check_name raised otherwise
    if not messages and keep_alive_s == 0:
        return Unload(route="chat", model=body.model, name=advert.name)
    check_thinking(advert, body.model, think)
    wants = ["tools"] if body.tools else []
    if any(message.images for message in messages):
        wants.append("vision")
    check_capabilities(advert, name, body.model, verb="chat", wants=wants)
    sampling, load = fields.parse_options(body.options)
    if not messages:
        return Load(route="chat", model=body.model, job=_load_job(advert, load, keep_alive_s))
    chat = job(
        model=advert.name,
        kind="chat",
        messages=messages,
        tools=body.tools or None,
        **_generation_fields(body, think, top_logprobs, keep_alive_s, sampling, load),
    )
    return Call(kind="chat", model=body.model, name=advert.name, job=chat)


def embed_not_found(model: str) -> ModelNotFound:
    """The embedding routes' (and the scheduler's) wording."""
    return ModelNotFound(f"model {gofmt.quote(model)} not found, try pulling it first")


def _inputs(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise InvalidRequest("invalid input type")


def embed_call(body: EmbedRequest, advert: ModelAdvert | None) -> EmbedCall | Load:
    """``/api/embed``'s checks; an empty input loads the model (no vectors, as Ollama)."""
    keep_alive_s = fields.keep_alive(body.keep_alive)
    if not body.model:
        raise ModelNotFound.named("")
    names.normalize(body.model)  # an invalid name is a 400 before the input is looked at
    inputs = _inputs(body.input)
    if advert is None:
        raise embed_not_found(body.model)
    sampling, load = fields.parse_options(body.options)
    if not inputs:
        return Load(route="embed", model=body.model, job=_load_job(advert, load, keep_alive_s))
    embed = job(
        model=advert.name,
        kind="embed",
        inputs=inputs,
        dimensions=body.dimensions if body.dimensions and body.dimensions > 0 else None,
        normalize=True,
        truncate=body.truncate,
        keep_alive_s=keep_alive_s,
        options=sampling,
        load=load,
    )
    return EmbedCall(model=body.model, job=embed)


def embeddings_call(body: EmbeddingRequest, advert: ModelAdvert | None) -> EmbedCall | Load:
    """The legacy ``/api/embeddings``' checks; an empty prompt loads the model."""
    keep_alive_s = fields.keep_alive(body.keep_alive)
    if not body.model:
        raise InvalidRequest(MODEL_REQUIRED)
    check_name(body.model, advert, missing=embed_not_found(body.model))
    assert advert is not None  # check_name raised otherwise
    sampling, load = fields.parse_options(body.options)
    if not body.prompt:
        return Load(route="embeddings", model=body.model, job=_load_job(advert, load, keep_alive_s))
    embed = job(
        model=advert.name,
        kind="embed",
        inputs=[body.prompt],
        normalize=False,  # the legacy route returns the model's raw vector
        keep_alive_s=keep_alive_s,
        options=sampling,
        load=load,
    )
    return EmbedCall(model=body.model, job=embed, legacy=True)
