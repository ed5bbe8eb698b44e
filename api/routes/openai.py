"""The OpenAI-compatible routes under ``/v1``, built the way Ollama builds them: translate
the request into a native body, run the native call, translate the answer back."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from api import ollama
from api.catalog import get_catalog
from api.embed import EmbedRequest, embed, embed_call
from api.inference import Call, objects
from api.openai import responses, translate
from api.openai.errors import OpenAIRoute
from api.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse,
)
from api.openai.sse import Translator, sse_response
from api.routes import models
from api.routes.inference import chat_call, generate_call
from api.state import AppState, StateDep
from api.streaming import unless_disconnected
from shared import names
from shared.errors import InvalidRequest, ModelNotFound

router = APIRouter(prefix="/v1", route_class=OpenAIRoute)

N = TypeVar("N", bound=BaseModel)


def _native(model: type[N], body: dict[str, Any]) -> N:
    try:
        return model.model_validate(body)
    except ValidationError as exc:  # a value the native API refuses (e.g. a bad think level)
        raise InvalidRequest(str(exc.errors()[0].get("msg", "invalid request"))) from exc


async def _one(obj: dict[str, Any]) -> AsyncGenerator[dict[str, Any]]:
    yield obj


def _answer(
    state: AppState, call: Call | dict[str, Any], *, stream: bool
) -> AsyncGenerator[dict[str, Any]]:
    """The native objects of a call, or the control response (nothing to generate)."""
    if isinstance(call, dict):
        return _one(call)
    return objects(
        state.dispatcher,
        call,
        queue_timeout_s=state.settings.queue_timeout_s,
        aggregate=not stream,
    )


async def _final(request: Request, native: AsyncGenerator[dict[str, Any]]) -> dict[str, Any]:
    """The one aggregated object of a ``stream: false`` call (a client leaving cancels it)."""
    try:
        return await unless_disconnected(request, anext(native))
    finally:
        await native.aclose()


async def _run(
    request: Request,
    state: AppState,
    call: Call | dict[str, Any],
    *,
    stream: bool,
    translator: Translator,
    render: Callable[[dict[str, Any]], dict[str, Any]],
) -> Response:
    """SSE through ``translator``, or the aggregated native answer through ``render``."""
    native = _answer(state, call, stream=stream)
    if stream:
        return await sse_response(request, native, translator)
    return JSONResponse(render(await _final(request, native)))


@router.post("/chat/completions")
async def chat_completions(request: Request, state: StateDep) -> Response:
    req = await parse(request, ChatCompletionRequest)
    body = _native(ollama.ChatRequest, translate.chat_request(req))
    call = await chat_call(state, body)
    completion_id = responses.new_id("chatcmpl")
    return await _run(
        request,
        state,
        call,
        stream=req.stream,
        translator=responses.ChatChunks(completion_id, include_usage=req.include_usage),
        render=lambda answer: responses.chat_completion(completion_id, answer),
    )


@router.post("/completions")
async def completions(request: Request, state: StateDep) -> Response:
    req = await parse(request, CompletionRequest)
    body = _native(ollama.GenerateRequest, translate.completion_request(req))
    call = await generate_call(state, body)
    completion_id = responses.new_id("cmpl")
    return await _run(
        request,
        state,
        call,
        stream=req.stream,
        translator=responses.CompletionChunks(completion_id, include_usage=req.include_usage),
        render=lambda answer: responses.completion(completion_id, answer),
    )


@router.post("/embeddings")
async def embeddings(request: Request, state: StateDep) -> Response:
    req = await parse(request, EmbeddingRequest)
    body = _native(EmbedRequest, translate.embed_request(req))
    call = await unless_disconnected(request, embed_call(state, body))
    if isinstance(call, dict):
        native = call  # nothing to embed: the model was loaded
    else:
        answer = embed(state.dispatcher, call, queue_timeout_s=state.settings.queue_timeout_s)
        native = await unless_disconnected(request, answer)
    return JSONResponse(responses.embedding_list(req.model, native, req.encoding_format))


@router.get("/models")
async def list_models(state: StateDep) -> dict[str, Any]:
    return responses.model_list(await models.tags(state))


@router.get("/models/{model:path}")
async def retrieve_model(model: str, state: StateDep) -> dict[str, Any]:
    # a path parameter, so namespaced and hf.co/... names work (Ollama's cannot match "/");
    # resolved like /api/show, so aliases from /api/copy work and deleted models do not
    name = names.normalize(model)
    advert = await get_catalog(state).resolve(name)
    if advert is None:
        raise ModelNotFound.named(name)
    return responses.model_object(model, advert.modified_at)
