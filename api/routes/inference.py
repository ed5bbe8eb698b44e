"""POST /api/generate and /api/chat."""

from __future__ import annotations

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


def _unloads(keep_alive: float | str | None) -> bool:
    return keep_alive in (0, "0", "0s")


@router.post("/api/generate")
async def generate(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, ollama.GenerateRequest)
    if not body.model:
        raise ModelNotFound.named("")
    if body.raw and (body.template or body.system or body.context):
        raise InvalidRequest("raw mode does not support template, system, or context")
    name = await _resolve(state, body.model)
    if not body.prompt:
        reason = "unload" if _unloads(body.keep_alive) else "load"
        return JSONResponse(ollama.control_response(body.model, chat=False, reason=reason))
    call = Call(
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
    return await respond(
        request,
        state.dispatcher,
        call,
        stream=body.streaming,
        queue_timeout_s=state.settings.queue_timeout_s,
    )


@router.post("/api/chat")
async def chat(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, ollama.ChatRequest)
    if not body.model:
        raise InvalidRequest("model is required")
    name = await _resolve(state, body.model)
    if not body.messages:
        reason = "unload" if _unloads(body.keep_alive) else "load"
        return JSONResponse(ollama.control_response(body.model, chat=True, reason=reason))
    call = Call(
        kind="chat",
        model=body.model,
        name=name,
        options=ollama.sampling_options(body.options),
        messages=body.wire_messages(),
    )
    return await respond(
        request,
        state.dispatcher,
        call,
        stream=body.streaming,
        queue_timeout_s=state.settings.queue_timeout_s,
    )
