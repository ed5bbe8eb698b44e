"""The error rule for exceptions that are not Herd's own: before the first byte a status
(503 ``redis unavailable`` with ``Retry-After: 1`` for Redis out of reach, else 500), after
it exactly one terminal error line (NDJSON) or event (SSE), and the stream ends."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api import errors
from api.openai.sse import DONE, sse_response
from shared.errors import InvalidRequest

FAILURES: dict[str, Exception] = {
    "redis": RedisConnectionError("Error 111 connecting to redis:6379. Connection refused."),
    "redis-timeout": RedisTimeoutError("Timeout reading from socket"),
    "socket": ConnectionResetError(104, "Connection reset by peer"),
    "bug": RuntimeError("a bug"),
    "herd": InvalidRequest("a herd error"),
}


async def _chunks(failure: Exception, *, after: int) -> AsyncGenerator[dict[str, Any]]:
    for n in range(after):
        yield {"n": n, "done": False}
    raise failure


class _Echo:
    def feed(self, native: dict[str, Any]) -> list[dict[str, Any]]:
        return [native]


def _app() -> FastAPI:
    app = FastAPI()
    errors.install_error_handlers(app)

    @app.post("/api/{kind}/{after}")
    async def native(request: Request, kind: str, after: int) -> Response:
        return await errors.ndjson_response(request, _chunks(FAILURES[kind], after=after))

    @app.post("/v1/{kind}/{after}")
    async def openai(request: Request, kind: str, after: int) -> Response:
        return await sse_response(request, _chunks(FAILURES[kind], after=after), _Echo())

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # the app's own handlers answer: no exception may reach the test client
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.mark.parametrize("kind", ["redis", "redis-timeout", "socket"])
async def test_redis_out_of_reach_before_the_first_byte_is_a_503(
    client: httpx.AsyncClient, kind: str
) -> None:
    response = await client.post(f"/api/{kind}/0")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error == "redis unavailable: " + str(FAILURES[kind]).partition("\n")[0]


async def test_redis_out_of_reach_under_v1_is_openais_error_object(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/redis/0")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["message"].startswith("redis unavailable: Error 111 connecting")
    assert error["type"] == "api_error"


async def test_a_bug_before_the_first_byte_is_a_500(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/bug/0")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error: RuntimeError"}


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("redis", "redis unavailable: Error 111 connecting to redis:6379. Connection refused."),
        ("socket", "redis unavailable: [Errno 104] Connection reset by peer"),
        ("bug", "internal error: RuntimeError"),
        ("herd", "a herd error"),
    ],
)
async def test_a_stream_that_fails_ends_with_exactly_one_error_line(
    client: httpx.AsyncClient, kind: str, message: str
) -> None:
    response = await client.post(f"/api/{kind}/2")
    assert response.status_code == 200
    assert response.text.endswith("\n")
    lines = [orjson.loads(line) for line in response.text.split("\n")[:-1]]
    assert lines == [{"n": 0, "done": False}, {"n": 1, "done": False}, {"error": message}]


@pytest.mark.parametrize("kind", ["redis", "bug", "herd"])
async def test_an_sse_stream_that_fails_ends_with_one_error_event_and_no_done(
    client: httpx.AsyncClient, kind: str
) -> None:
    response = await client.post(f"/v1/{kind}/1")
    assert response.status_code == 200
    events = response.content.split(b"\n\n")
    assert events[-1] == b""
    assert DONE not in response.content
    assert events[0] == b'data: {"n":0,"done":false}'
    error = orjson.loads(events[1].removeprefix(b"data: "))["error"]
    assert error["message"] == errors.as_herd_error(FAILURES[kind]).message
    assert len(events) == 3
