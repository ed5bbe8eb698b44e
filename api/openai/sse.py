"""Server-sent events for /v1, with the same error rule as the native NDJSON streams.

An error before the first byte is an HTTP status with OpenAI's error body. After it,
one ``data: {"error": {...}}`` event ends the stream, whatever the exception
(``api.errors.as_herd_error``). Ollama swallows these (its client sees an empty delta
and no ``[DONE]``); the OpenAI SDKs raise ``APIError`` on this event.
A client that goes away cancels the work, while queued or while streaming.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.errors import terminal_error, unless_disconnected
from api.openai.responses import error_body
from shared.errors import HerdError

DONE = b"data: [DONE]\n\n"


class Translator(Protocol):
    def feed(self, native: dict[str, Any]) -> list[dict[str, Any]]:
        """The OpenAI chunks for one native object."""
        ...


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def sse_response(
    request: Request, native: AsyncGenerator[dict[str, Any]], translator: Translator
) -> Response:
    """Wait for the first native object (errors become a status), then stream events."""
    try:
        first = await unless_disconnected(request, anext(native))
    except StopAsyncIteration:
        raise HerdError("the model produced no response") from None

    async def body() -> AsyncIterator[bytes]:
        try:
            for chunk in translator.feed(first):
                yield event(chunk)
            async for obj in native:
                for chunk in translator.feed(obj):
                    yield event(chunk)
            yield DONE
        except Exception as exc:  # whatever it was: one error event, then the end
            error = terminal_error(exc)
            yield event(error_body(error.status, error.message))
        finally:
            # closing the native generator cancels the job (a client that left)
            with anyio.CancelScope(shield=True):
                await native.aclose()

    # exactly Ollama's content type (Starlette would append a charset to text/*)
    return StreamingResponse(body(), headers={"content-type": "text/event-stream"})
