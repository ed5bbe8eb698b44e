"""The OpenAI-compatible routes under ``/v1``, built the way Ollama builds them: translate
the request into a native body, run it through the same pipeline as ``/api`` (``requests``,
``control`` or ``dispatch``, ``responses``), translate the native answer back."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from api import bodies, control, requests
from api import responses as native_responses
from api.errors import unless_disconnected
from api.openai import responses, translate
from api.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse,
)
from api.openai.sse import Translator, sse_response
from api.requests import Call, Load, Unload
from api.state import AppState, StateDep
from shared import names
from shared.errors import HerdError, InvalidRequest, ModelNotFound


class OpenAIRoute(APIRoute):
    """A route whose ``HerdError``s render in OpenAI's shape (same status as natively)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except HerdError as exc:
                return responses.error_response(exc)

        return handle


router = APIRouter(prefix="/v1", route_class=OpenAIRoute)

N = TypeVar("N", bound=BaseModel)


def _native(model: type[N], body: dict[str, Any]) -> N:
    try:
        return model.model_validate(body)
    except ValidationError as exc:  # a value the native API refuses (e.g. a bad think level)
        raise InvalidRequest(str(exc.errors()[0].get("msg", "invalid request"))) from exc


async def _one(obj: dict[str, Any]) -> AsyncGenerator[dict[str, Any]]:
    yield obj


async def _answer(
    state: AppState, action: Call | Load | Unload, *, stream: bool
) -> AsyncGenerator[dict[str, Any]]:
    """The native objects of a call, or the load/unload answer (nothing to generate)."""
    if isinstance(action, Call):
        return native_responses.objects(
            state.dispatcher,
            action,
            queue_timeout_s=state.settings.queue_timeout_s,
            aggregate=not stream,
        )
    await control.run(state, action)
    return _one(native_responses.control_answer(action))


async def _final(request: Request, native: AsyncGenerator[dict[str, Any]]) -> dict[str, Any]:
    """The one aggregated object of a ``stream: false`` call (a client leaving cancels it)."""
    try:
        return await unless_disconnected(request, anext(native))
    finally:
        await native.aclose()


async def _run(
    request: Request,
    state: AppState,
    action: Call | Load | Unload,
    *,
    stream: bool,
    translator: Translator,
    render: Callable[[dict[str, Any]], dict[str, Any]],
) -> Response:
    """SSE through ``translator``, or the aggregated native answer through ``render``."""
    native = await _answer(state, action, stream=stream)
    if stream:
        return await sse_response(request, native, translator)
    return JSONResponse(render(await _final(request, native)))


@router.post("/chat/completions")
async def chat_completions(request: Request, state: StateDep) -> Response:
    req = await parse(request, ChatCompletionRequest)
    body = _native(bodies.ChatRequest, translate.chat_request(req))
    action = requests.chat_call(body, await state.aliases.lookup(body.model))
    completion_id = responses.new_id("chatcmpl")
    return await _run(
        request,
        state,
        action,
        stream=req.stream,
        translator=responses.ChatChunks(completion_id, include_usage=req.include_usage),
        render=lambda answer: responses.chat_completion(completion_id, answer),
    )


@router.post("/completions")
async def completions(request: Request, state: StateDep) -> Response:
    req = await parse(request, CompletionRequest)
    body = _native(bodies.GenerateRequest, translate.completion_request(req))
    action = requests.generate_call(body, await state.aliases.lookup(body.model))
    completion_id = responses.new_id("cmpl")
    return await _run(
        request,
        state,
        action,
        stream=req.stream,
        translator=responses.CompletionChunks(completion_id, include_usage=req.include_usage),
        render=lambda answer: responses.completion(completion_id, answer),
    )


@router.post("/embeddings")
async def embeddings(request: Request, state: StateDep) -> Response:
    req = await parse(request, EmbeddingRequest)
    body = _native(bodies.EmbedRequest, translate.embed_request(req))
    advert = await unless_disconnected(request, state.aliases.lookup(body.model))
    action = requests.embed_call(body, advert)
    if isinstance(action, Load):
        await unless_disconnected(request, control.run(state, action))
        native = native_responses.control_answer(action)  # nothing to embed: loaded
    else:
        answer = native_responses.embed(
            state.dispatcher, action, queue_timeout_s=state.settings.queue_timeout_s
        )
        native = await unless_disconnected(request, answer)
    return JSONResponse(responses.embedding_list(req.model, native, req.encoding_format))


@router.get("/models")
async def list_models(state: StateDep) -> dict[str, Any]:
    return responses.model_list(native_responses.tags(await state.aliases.entries()))


@router.get("/models/{model:path}")
async def retrieve_model(model: str, state: StateDep) -> dict[str, Any]:
    # a path parameter, so namespaced and hf.co/... names work (Ollama's cannot match "/");
    # resolved like /api/show, so aliases from /api/copy work and deleted models do not
    name = names.normalize(model)
    advert = await state.aliases.resolve(name)
    if advert is None:
        raise ModelNotFound.named(name)
    return responses.model_object(model, advert.modified_at)
