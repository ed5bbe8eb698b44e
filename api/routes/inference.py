"""POST /api/generate and /api/chat."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api import ollama
from api.body import parse_body
from api.calls import chat_call, generate_call
from api.inference import Call, respond
from api.state import AppState, StateDep
from api.streaming import unless_disconnected

__all__ = ["chat_call", "generate_call", "router"]

router = APIRouter()


async def _answer(
    request: Request, state: AppState, call: Call | dict[str, Any], *, stream: bool
) -> Response:
    if isinstance(call, dict):
        # load and unload answer one object, even when streaming (as Ollama does)
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
    call = await unless_disconnected(request, generate_call(state, body))
    return await _answer(request, state, call, stream=body.streaming)


@router.post("/api/chat")
async def chat(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, ollama.ChatRequest)
    call = await unless_disconnected(request, chat_call(state, body))
    return await _answer(request, state, call, stream=body.streaming)
