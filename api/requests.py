"""Step 1 of a request: its body, read in ``api.bodies``, checked here in Ollama's order.
Pure: no I/O.

A route reads the body (``bodies.parse``), looks the model up (``Aliases.lookup``) and hands
both here; what comes back says what to do:

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

from dataclasses import dataclass
from typing import Any, Literal

from api import fields, gofmt
from api.bodies import ChatRequest, EmbeddingRequest, EmbedRequest, GenerateRequest
from shared import names, thinking
from shared.errors import (
    BAD_CONTEXT_TOKEN,
    MODEL_REQUIRED,
    HerdError,
    InvalidRequest,
    ModelNotFound,
)
from shared.messages import (
    GenerateJob,
    LoadOptions,
    ModelAdvert,
    SamplingOptions,
)

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
