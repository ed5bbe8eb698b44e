"""Ollama's streaming rule, in one place.

An error before the first byte is an HTTP status with ``{"error": ...}``; after it, one
final ``{"error": ...}`` NDJSON line, and the stream ends. ``stream: false`` reads the same
event source to its end. A client that goes away cancels the work either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shared.errors import Cancelled, HerdError

T = TypeVar("T")

NDJSON = "application/x-ndjson"


def _line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


async def ndjson_response(request: Request, objects: AsyncIterator[dict[str, Any]]) -> Response:
    """Wait for the first object (errors become a status), then stream the rest.

    The wait watches the client: one that leaves while its job is queued cancels it."""
    try:
        first = await unless_disconnected(request, anext(objects))
    except StopAsyncIteration:
        raise HerdError("the model produced no response") from None

    async def body() -> AsyncIterator[bytes]:
        try:
            yield _line(first)
            async for obj in objects:
                yield _line(obj)
        except HerdError as exc:
            yield _line({"error": exc.message})
        finally:
            with anyio.CancelScope(shield=True):
                await objects.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(body(), media_type=NDJSON)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client goes away first, cancel it (a non-streamed request)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client left, or this handler itself is being cancelled
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, HerdError):
                await task
    if task.cancelled():
        raise Cancelled("request canceled")
    return task.result()
