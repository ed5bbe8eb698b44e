"""Liveness, readiness, and Ollama's root and version routes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from redis.exceptions import RedisError

from api.state import StateDep
from shared.version import VERSION

router = APIRouter()


@router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def root() -> str:
    return "Ollama is running"


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version() -> dict[str, str]:
    return {"version": VERSION}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive; never touches Redis (a Redis outage must not restart pods)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """Ready to take requests: Redis answers."""
    try:
        await state.redis.ping()
    except (RedisError, OSError) as exc:
        return JSONResponse({"status": "unavailable", "reason": f"redis: {exc}"}, 503)
    return JSONResponse({"status": "ok"})
