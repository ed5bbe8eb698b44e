"""One handler renders every error as Ollama's ``{"error": message}`` with its status."""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from shared.errors import HerdError

log = structlog.get_logger()


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


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    # a bug must still answer in Ollama's shape; the traceback goes to the log
    log.exception("unhandled_error", exc_info=exc)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(HerdError, _herd_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
