"""The error rule, as the client meets it: an error before the first byte is an HTTP
status with ``{"error": ...}`` (one handler renders every ``HerdError`` so); after it, one
final ``{"error": ...}`` NDJSON line, and the stream ends. A client that goes away cancels
the work either way. Any other exception follows the same rule (``as_herd_error``): Redis
out of reach is a 503 ``redis unavailable: <reason>`` with ``Retry-After: 1``, anything
else a 500 ``internal error: <type>``; a stream never ends without its terminal line.

The table of errors and their statuses is ``shared.errors``; this module is where the API
applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
import orjson
import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from api.openai.responses import error_body
from shared.errors import REDIS_UNAVAILABLE, Cancelled, EngineFailure, HerdError, Unavailable

T = TypeVar("T")

log = structlog.get_logger()

NDJSON = "application/x-ndjson"

#: What Redis out of reach raises: redis-py's own errors, a replica refusing writes in a
#: failover, and the socket's (refused, reset, a name that does not resolve).
REDIS_DOWN: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    ConnectionError,
    socket.gaierror,
)
#: Clients may retry this soon after Redis was out of reach (a failover takes seconds).
REDIS_RETRY_AFTER_S = 1


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).strip().partition("\n")[0] or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_herd_error(exc: Exception) -> HerdError:
    """``exc`` as the client sees it: itself if a ``HerdError``, a 503 ``redis unavailable``
    (``Retry-After: 1``) for Redis out of reach, else a 500 naming the exception's type."""
    if isinstance(exc, HerdError):
        return exc
    if isinstance(exc, REDIS_DOWN):
        message = REDIS_UNAVAILABLE.format(reason=_short(exc))
        return Unavailable(message, retry_after_s=REDIS_RETRY_AFTER_S)
    return EngineFailure(f"internal error: {type(exc).__name__}")


def terminal_error(exc: Exception) -> HerdError:
    """The error a stream ends with (logged unless it is one of Herd's own)."""
    error = as_herd_error(exc)
    if isinstance(exc, REDIS_DOWN):
        log.warning("stream_failed", error=error.message)
    elif not isinstance(exc, HerdError):
        log.error("stream_failed", exc_info=exc)
    return error


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
        except Exception as exc:  # whatever it was, the stream ends with one error line
            yield _line({"error": terminal_error(exc).message})
        finally:
            with anyio.CancelScope(shield=True):
                await objects.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(body(), media_type=NDJSON)


async def progress_response(
    request: Request, lines: AsyncIterator[dict[str, Any]], *, stream: bool
) -> Response:
    """A progress stream (pull, push, create): its NDJSON lines, or without ``stream`` the
    last one alone once done; a client that leaves first cancels the work either way."""
    if stream:
        return await ndjson_response(request, lines)

    async def last() -> dict[str, Any]:
        final: dict[str, Any] = {}
        async for line in lines:
            final = line
        return final

    return JSONResponse(await unless_disconnected(request, last()))


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


async def _herd_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HerdError)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"error": str(exc.errors()[0].get("msg", "invalid request"))}, 400)


async def _http_error(_: Request, exc: Exception) -> PlainTextResponse:
    # Ollama (gin) answers unknown routes and wrong methods in plain text
    assert isinstance(exc, HTTPException)
    texts = {404: "404 page not found", 405: "405 method not allowed"}
    return PlainTextResponse(texts.get(exc.status_code, str(exc.detail)), exc.status_code)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    error = as_herd_error(exc)
    log.warning("redis_unavailable", path=request.url.path, error=error.message)
    # /v1 clients get OpenAI's error object, as every other /v1 error
    body: dict[str, Any] = (
        error_body(error.status, error.message)
        if request.url.path.startswith("/v1/")
        else {"error": error.message}
    )
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    # a bug must still answer in Ollama's shape; the traceback goes to the log
    log.exception("unhandled_error", exc_info=exc)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Every error as Ollama's ``{"error": message}`` with its status (the table in
    ``shared.errors``)."""
    app.add_exception_handler(Exception, _unexpected)
    for redis_down in REDIS_DOWN:
        app.add_exception_handler(redis_down, _redis_down)
    app.add_exception_handler(HerdError, _herd_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
