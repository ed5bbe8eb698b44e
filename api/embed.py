"""``/api/embed`` and the legacy ``/api/embeddings``: validated into a job of kind
``embed`` that a worker runs, answered with one object.

``embed_call`` + ``embed`` are the boundary the /v1 embeddings route reuses, like
``chat_call`` + ``objects`` for chat. An empty input loads the model (a ``load`` job) and
answers with no vectors, as Ollama does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt

from api import gofmt, jobs, options
from api.dispatch import Dispatcher
from api.state import AppState
from shared import names
from shared.errors import MODEL_REQUIRED, InvalidRequest, ModelNotFound
from shared.messages import GenerateJob, LoadOptions, ModelAdvert


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    input: Any = None
    truncate: StrictBool | None = None
    dimensions: StrictInt | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


class EmbeddingRequest(BaseModel):
    """The legacy request: one ``prompt``, one vector back, not normalised."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    prompt: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


@dataclass(frozen=True)
class EmbedCall:
    model: str  # as the client sent it (echoed back)
    #: The embed job, without id and times.
    job: GenerateJob
    legacy: bool = False


def _inputs(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise InvalidRequest("invalid input type")


def not_found(model: str) -> ModelNotFound:
    """The embedding routes' (and the scheduler's) wording."""
    return ModelNotFound(f"model {gofmt.quote(model)} not found, try pulling it first")


async def _served(state: AppState, model: str) -> ModelAdvert:
    advert = await state.catalog.resolve(names.normalize(model))
    if advert is None:
        raise not_found(model)
    return advert


async def _load(
    state: AppState, advert: ModelAdvert, load: LoadOptions, keep: float | None
) -> None:
    job = jobs.template(model=advert.name, kind="load", load=load, keep_alive_s=keep)
    await jobs.run_once(state.dispatcher, jobs.stamped(job, state.settings.queue_timeout_s))


async def embed_call(state: AppState, body: EmbedRequest) -> EmbedCall | dict[str, Any]:
    """Validate an embed request: the call to run, or (empty input) the load answer."""
    keep_alive_s = options.keep_alive(body.keep_alive)
    if not body.model:
        raise ModelNotFound.named("")
    names.normalize(body.model)  # an invalid name is a 400 before the input is looked at
    inputs = _inputs(body.input)
    advert = await _served(state, body.model)
    sampling, load = options.parse_options(body.options)
    if not inputs:
        await _load(state, advert, load, keep_alive_s)
        return {"model": body.model, "embeddings": []}
    job = jobs.template(
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
    return EmbedCall(model=body.model, job=job)


async def embeddings_call(state: AppState, body: EmbeddingRequest) -> EmbedCall | dict[str, Any]:
    """Validate a legacy embeddings request: the call, or (empty prompt) the load answer."""
    keep_alive_s = options.keep_alive(body.keep_alive)
    if not body.model:
        raise InvalidRequest(MODEL_REQUIRED)
    advert = await _served(state, body.model)
    sampling, load = options.parse_options(body.options)
    if not body.prompt:
        await _load(state, advert, load, keep_alive_s)
        return {"embedding": []}
    job = jobs.template(
        model=advert.name,
        kind="embed",
        inputs=[body.prompt],
        normalize=False,  # the legacy route returns the model's raw vector
        keep_alive_s=keep_alive_s,
        options=sampling,
        load=load,
    )
    return EmbedCall(model=body.model, job=job, legacy=True)


async def embed(
    dispatcher: Dispatcher, call: EmbedCall, *, queue_timeout_s: float
) -> dict[str, Any]:
    """Run ``call``: Ollama's ``/api/embed`` (or, legacy, ``/api/embeddings``) answer."""
    started = time.perf_counter_ns()
    done, load_ns = await jobs.run_once(dispatcher, jobs.stamped(call.job, queue_timeout_s))
    vectors = done.embeddings or []
    if call.legacy:
        return {"embedding": vectors[0] if vectors else []}
    body: dict[str, Any] = {"model": call.model, "embeddings": vectors}
    metrics = {
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": load_ns,
        "prompt_eval_count": done.n_prompt_tokens,
    }
    body.update({key: value for key, value in metrics.items() if value})
    return body
