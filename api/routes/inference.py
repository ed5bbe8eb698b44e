"""POST /api/generate, /api/chat, /api/embed and the legacy /api/embeddings.

Each reads as the pipeline: ``bodies`` (decode), look the model up, ``requests`` (check),
then a job for ``dispatch`` whose events ``responses`` renders, or a load/unload
(``control``). A large body (base64 images) is decoded and checked in a thread
(``offload.off_loop``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api import bodies, control, offload, requests, responses
from api.errors import unless_disconnected
from api.requests import Call, EmbedCall, Load, Unload
from api.state import AppState, StateDep

router = APIRouter()


async def _answer(
    request: Request, state: AppState, action: Call | Load | Unload, *, stream: bool
) -> Response:
    if isinstance(action, Call):
        return await responses.respond(
            request,
            state.dispatcher,
            action,
            stream=stream,
            queue_timeout_s=state.settings.queue_timeout_s,
        )
    # load and unload answer one object, even when streaming (as Ollama does)
    await unless_disconnected(request, control.run(state, action))
    return JSONResponse(responses.control_answer(action))


@router.post("/api/generate")
async def generate(request: Request, state: StateDep) -> Response:
    raw = await request.body()
    body = await offload.off_loop(len(raw), bodies.parse, raw, bodies.GenerateRequest)
    advert = await unless_disconnected(request, state.aliases.lookup(body.model))
    action = await offload.off_loop(len(raw), requests.generate_call, body, advert)
    return await _answer(request, state, action, stream=body.streaming)


@router.post("/api/chat")
async def chat(request: Request, state: StateDep) -> Response:
    raw = await request.body()
    body = await offload.off_loop(len(raw), bodies.parse, raw, bodies.ChatRequest)
    advert = await unless_disconnected(request, state.aliases.lookup(body.model))
    action = await offload.off_loop(len(raw), requests.chat_call, body, advert)
    return await _answer(request, state, action, stream=body.streaming)


async def _embedded(request: Request, state: AppState, action: EmbedCall | Load) -> Response:
    if isinstance(action, Load):
        await unless_disconnected(request, control.run(state, action))
        return JSONResponse(responses.control_answer(action))
    answer = responses.embed(
        state.dispatcher, action, queue_timeout_s=state.settings.queue_timeout_s
    )
    return JSONResponse(await unless_disconnected(request, answer))


@router.post("/api/embed")
async def embed(request: Request, state: StateDep) -> Response:
    raw = await request.body()
    body = await offload.off_loop(len(raw), bodies.parse, raw, bodies.EmbedRequest)
    advert = await unless_disconnected(request, state.aliases.lookup(body.model))
    return await _embedded(request, state, requests.embed_call(body, advert))


@router.post("/api/embeddings")
async def embeddings(request: Request, state: StateDep) -> Response:
    raw = await request.body()
    body = await offload.off_loop(len(raw), bodies.parse, raw, bodies.EmbeddingRequest)
    advert = await unless_disconnected(request, state.aliases.lookup(body.model))
    return await _embedded(request, state, requests.embeddings_call(body, advert))
