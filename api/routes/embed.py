"""POST /api/embed and the legacy /api/embeddings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api.body import parse_body
from api.embed import EmbedCall, EmbeddingRequest, EmbedRequest, embed, embed_call, embeddings_call
from api.state import AppState, StateDep
from api.streaming import unless_disconnected

router = APIRouter()


async def _answer(request: Request, state: AppState, call: EmbedCall | dict[str, Any]) -> Response:
    if isinstance(call, dict):
        return JSONResponse(call)
    queue_timeout_s = state.settings.queue_timeout_s
    answer = embed(state.dispatcher, call, queue_timeout_s=queue_timeout_s)
    return JSONResponse(await unless_disconnected(request, answer))


@router.post("/api/embed")
async def embed_route(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, EmbedRequest)
    return await _answer(
        request, state, await unless_disconnected(request, embed_call(state, body))
    )


@router.post("/api/embeddings")
async def embeddings_route(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, EmbeddingRequest)
    call = await unless_disconnected(request, embeddings_call(state, body))
    return await _answer(request, state, call)
