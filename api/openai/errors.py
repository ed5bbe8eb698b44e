"""OpenAI's error shape for everything under ``/v1`` (Ollama's ``openai.NewError``)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from shared.errors import HerdError

_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "api_error"),
            "param": None,
            "code": None,
        }
    }


def error_response(exc: HerdError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.status, exc.message), status_code=exc.status, headers=exc.headers
    )


class OpenAIRoute(APIRoute):
    """A route whose ``HerdError``s render in OpenAI's shape (same status as natively)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except HerdError as exc:
                return error_response(exc)

        return handle
