"""Validating ``/api/generate`` and ``/api/chat`` bodies into calls, in Ollama's order.

``generate_call`` and ``chat_call`` are the boundary the /v1 layer reuses: they return the
``Call`` to run, or the control response to send as it is. A request with nothing to
generate loads the model (a job of kind ``load``, answered once the worker reports it
loaded) or, with ``keep_alive: 0``, unloads it everywhere it is loaded.

The checks run in the order Ollama's handlers run them, so a request with several faults
gets the error an Ollama server would give: decoding (think, keep_alive, base64 images),
``top_logprobs``, the model name, unload, raw mode, thinking, capabilities, options, load,
format.
"""

from __future__ import annotations

from typing import Any

from api import gofmt, jobs, ollama, options
from api.inference import Call
from api.state import AppState
from shared import names
from shared.errors import MODEL_REQUIRED, HerdError, InvalidRequest, ModelNotFound
from shared.messages import GenerateJob, LoadOptions, ModelAdvert, SamplingOptions


async def resolve(
    state: AppState, model: str, *, empty: HerdError, missing: HerdError
) -> tuple[str, ModelAdvert]:
    """The normalised name and the served model behind it; Ollama's errors otherwise."""
    if not model:
        raise empty
    name = names.normalize(model)
    advert = await state.catalog.resolve(name)
    if advert is None:
        raise missing
    return name, advert


def check_top_logprobs(value: int | None) -> int:
    if value is not None and not 0 <= value <= 20:
        raise InvalidRequest("top_logprobs must be between 0 and 20")
    return value or 0


def check_thinking(advert: ModelAdvert, model: str, think: bool | str | None) -> None:
    if "thinking" not in advert.capabilities and options.thinks(think):
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


async def _unload(state: AppState, name: str, model: str, *, chat: bool) -> dict[str, Any]:
    await jobs.unload(state.redis, state.registry, name)
    return ollama.control_response(model, chat=chat, reason="unload")


async def _load(state: AppState, job: GenerateJob, model: str, *, chat: bool) -> dict[str, Any]:
    await jobs.run_once(state.dispatcher, jobs.stamped(job, state.settings.queue_timeout_s))
    return ollama.control_response(model, chat=chat, reason="load")


def _load_job(name: str, load: LoadOptions, keep_alive_s: float | None) -> GenerateJob:
    return jobs.template(model=name, kind="load", load=load, keep_alive_s=keep_alive_s)


def _generation_fields(
    body: ollama.GenerateRequest | ollama.ChatRequest,
    think: bool | str | None,
    top_logprobs: int,
    keep_alive_s: float | None,
    sampling: SamplingOptions,
    load: LoadOptions,
) -> dict[str, Any]:
    """The job fields chat and generate share, once validated."""
    return {
        "format": options.parse_format(body.format),
        "think": think,
        "logprobs": bool(body.logprobs),
        "top_logprobs": top_logprobs,
        "truncate": body.truncate,
        "shift": body.shift,
        "keep_alive_s": keep_alive_s,
        "options": sampling,
        "load": load,
    }


async def generate_call(state: AppState, body: ollama.GenerateRequest) -> Call | dict[str, Any]:
    """Validate a generate request: the call to run, or the control response to send."""
    think = options.parse_think(body.think)
    keep_alive_s = options.keep_alive(body.keep_alive)
    images = options.check_images(body.images)
    top_logprobs = check_top_logprobs(body.top_logprobs)
    name, advert = await resolve(
        state,
        body.model,
        empty=ModelNotFound.named(""),
        missing=ModelNotFound.named(body.model),
    )
    prompt = body.prompt or ""
    if not prompt and keep_alive_s == 0:
        return await _unload(state, advert.name, body.model, chat=False)
    if body.raw and (body.template or body.system or body.context):
        raise InvalidRequest("raw mode does not support template, system, or context")
    check_thinking(advert, body.model, think)
    wants = ["insert"] if body.suffix else []
    if prompt and images:
        wants.append("vision")
    check_capabilities(advert, name, body.model, verb="generate", wants=wants)
    sampling, load = options.parse_options(body.options)
    if not prompt:
        return await _load(
            state, _load_job(advert.name, load, keep_alive_s), body.model, chat=False
        )
    job = jobs.template(
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
    return Call(kind="generate", model=body.model, name=advert.name, job=job)


async def chat_call(state: AppState, body: ollama.ChatRequest) -> Call | dict[str, Any]:
    """Validate a chat request: the call to run, or the control response to send."""
    think = options.parse_think(body.think)
    keep_alive_s = options.keep_alive(body.keep_alive)
    messages = body.wire_messages()
    for message in messages:
        options.check_images(message.images)
    top_logprobs = check_top_logprobs(body.top_logprobs)
    name, advert = await resolve(
        state,
        body.model,
        empty=InvalidRequest(MODEL_REQUIRED),
        missing=ModelNotFound.named(body.model),
    )
    if not messages and keep_alive_s == 0:
        return await _unload(state, advert.name, body.model, chat=True)
    check_thinking(advert, body.model, think)
    wants = ["tools"] if body.tools else []
    if any(message.images for message in messages):
        wants.append("vision")
    check_capabilities(advert, name, body.model, verb="chat", wants=wants)
    sampling, load = options.parse_options(body.options)
    if not messages:
        return await _load(state, _load_job(advert.name, load, keep_alive_s), body.model, chat=True)
    job = jobs.template(
        model=advert.name,
        kind="chat",
        messages=messages,
        tools=body.tools or None,
        **_generation_fields(body, think, top_logprobs, keep_alive_s, sampling, load),
    )
    return Call(kind="chat", model=body.model, name=advert.name, job=job)
