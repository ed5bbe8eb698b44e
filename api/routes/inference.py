"""POST /api/generate and /api/chat."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api import ollama
from api.body import parse_body
from api.inference import Call, respond
from api.state import AppState, StateDep
from shared import names
from shared.errors import InvalidRequest, ModelNotFound

router = APIRouter()


async def _resolve(state: AppState, model: str) -> str:
    name = names.normalize(model)
    if await state.registry.find(name) is None:
        raise ModelNotFound.named(model)
    return name


def _control(body: ollama.GenerateRequest | ollama.ChatRequest, *, chat: bool) -> dict[str, Any]:
    """A request with nothing to generate loads the model, or with ``keep_alive: 0`` unloads."""
    reason = "unload" if body.keep_alive in (0, "0", "0s") else "load"
    return ollama.control_response(body.model, chat=chat, reason=reason)


async def generate_call(state: AppState, body: ollama.GenerateRequest) -> Call | dict[str, Any]:
    """Validate a generate request: the call to run, or the control response to send."""
    if not body.model:
        raise ModelNotFound.named("")
    if body.raw and (body.template or body.system or body.context):
        raise InvalidRequest("raw mode does not support template, system, or context")
    name = await _resolve(state, body.model)
    if not body.prompt:
        return _control(body, chat=False)
    return Call(
        kind="generate",
        model=body.model,
        name=name,
        options=ollama.sampling_options(body.options),
        messages=[],
        prompt=body.prompt,
        system=body.system,
        raw=body.raw,
        context=body.context,
    )


async def chat_call(state: AppState, body: ollama.ChatRequest) -> Call | dict[str, Any]:
    """Validate a chat request: the call to run, or the control response to send."""
    if not body.model:
        raise InvalidRequest("model is required")
    name = await _resolve(state, body.model)
    if not body.messages:
        return _control(body, chat=True)
    return Call(
        kind="chat",
        model=body.model,
        name=name,
        options=ollama.sampling_options(body.options),
        messages=body.wire_messages(),
    )


async def _answer(
    request: Request, state: AppState, call: Call | dict[str, Any], *, stream: bool
) -> Response:
    if isinstance(call, dict):
        return JSONResponse(call)
    return await respond(
        request,
        state.dispatcher,
        call,
        stream=stream,
        queue_timeout_s=state.settings.queue_timeout_s,
    )


@router.post("/api/generate")
async def generate(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, ollama.GenerateRequest)
    return await _answer(request, state, await generate_call(state, body), stream=body.streaming)


@router.post("/api/chat")
async def chat(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, ollama.ChatRequest)
    return await _answer(request, state, await chat_call(state, body), stream=body.streaming)
