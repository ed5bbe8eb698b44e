"""The API's routes over real HTTP, against real Redis and in-process FakeEngine workers."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from shared import keys
from tests.conftest import ApiFactory, WorkerFactory
from tests.polling import until
from worker.fake_engine import FAIL_MARKER, REPLY

CHAT = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}]}


async def test_root_version_and_health(api: ApiFactory) -> None:
    client = await api()
    root = await client.get("/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert (await client.head("/")).status_code == 200
    version = (await client.get("/api/version")).json()["version"]
    assert all(part.isdigit() for part in version.split("."))
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).json() == {"status": "ok"}


async def test_readyz_is_503_when_redis_is_unreachable(api: ApiFactory) -> None:
    from cli.ports import free_port

    client = await api(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert "redis" in ready.json()["reason"]
    assert (await client.get("/healthz")).status_code == 200


async def test_tags_lists_models_of_live_workers(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    assert (await client.get("/api/tags")).json() == {"models": []}
    await worker(fake_models=["alpha:1", "beta:2"])
    names = {m["name"] for m in (await client.get("/api/tags")).json()["models"]}
    assert names == {"alpha:1", "beta:2"}


async def test_chat_streams_ndjson_by_default(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    await worker()
    async with client.stream("POST", "/api/chat", json=CHAT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [orjson.loads(line) async for line in response.aiter_lines() if line]
    assert all(not line["done"] for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert "".join(line["message"]["content"] for line in lines) == REPLY
    for key in ("total_duration", "load_duration", "prompt_eval_count", "eval_count"):
        assert final[key] > 0
    assert final["total_duration"] >= final["eval_duration"]
    assert "context" not in final


async def test_generate_not_streamed_returns_one_object(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    await worker()
    body = {"model": "gemma3:270m", "prompt": "hi", "stream": False, "options": {"num_predict": 3}}
    response = await client.post("/api/generate", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["response"] == "Hello from the "
    assert data["done_reason"] == "length" and data["eval_count"] == 3
    assert data["model"] == "gemma3:270m"
    assert isinstance(data["context"], list)


async def test_model_name_is_echoed_as_sent(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    await worker(fake_models=["tiny:latest"])
    response = await client.post(
        "/api/generate", json={"model": "Tiny", "prompt": "x", "stream": False}
    )
    assert response.status_code == 200 and response.json()["model"] == "Tiny"


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/chat", {**CHAT, "model": "nope"}, 404, "model 'nope' not found"),
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ("/api/generate", {"prompt": "x"}, 404, "model '' not found"),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/chat", {**CHAT, "model": "../x"}, 400, "invalid model name"),
        (
            "/api/generate",
            {"model": "gemma3:270m", "prompt": "x", "raw": True, "system": "s"},
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            "/api/chat",
            {**CHAT, "options": {"temperature": "x"}},
            400,
            'option "temperature" must be of type float32',
        ),
    ],
)
async def test_errors_have_ollamas_status_and_body(
    api: ApiFactory,
    worker: WorkerFactory,
    path: str,
    body: dict[str, object],
    status: int,
    error: str,
) -> None:
    client = await api()
    await worker()
    response = await client.post(path, json=body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": error}


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", "missing request body"),
        (b"{nope", "invalid JSON"),
        (b"[1]", "cannot unmarshal array"),
        (b'{"model": 5}', "cannot unmarshal number into Go struct field GenerateRequest.model"),
    ],
)
async def test_malformed_bodies_are_400(api: ApiFactory, content: bytes, error: str) -> None:
    client = await api()
    response = await client.post("/api/generate", content=content)
    assert response.status_code == 400
    assert error in response.json()["error"]


async def test_unknown_route_and_wrong_method(api: ApiFactory) -> None:
    client = await api()
    missing = await client.get("/api/nothing")
    assert missing.status_code == 404 and missing.text == "404 page not found"
    wrong = await client.get("/api/chat")
    assert wrong.status_code == 405 and wrong.text == "405 method not allowed"


async def test_empty_prompt_and_messages_answer_load(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    await worker()
    load = (await client.post("/api/generate", json={"model": "gemma3:270m"})).json()
    assert load["done"] is True and load["done_reason"] == "load"
    unload = await client.post("/api/chat", json={"model": "gemma3:270m", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"


async def test_error_mid_stream_is_a_final_error_line(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    await worker()
    body = {**CHAT, "messages": [{"role": "user", "content": FAIL_MARKER}]}
    async with client.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        lines = [orjson.loads(line) async for line in response.aiter_lines() if line]
    assert [line.get("done") for line in lines[:-1]] == [False, False]
    assert lines[-1] == {"error": "fake engine failure"}


async def test_error_before_first_token_is_a_status(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    await worker()
    body = {**CHAT, "options": {"num_predict": 0}}
    # the fake produces no text for num_predict 0: the first object is the final one
    response = await client.post("/api/chat", json={**body, "stream": True})
    assert response.status_code == 200
    assert orjson.loads(response.text.splitlines()[-1])["done"] is True


async def test_a_queued_stream_whose_client_left_never_runs(
    redis: Redis, api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    busy = await worker(num_parallel=1, fake_token_delay_s=0.05)
    running = asyncio.create_task(client.post("/api/chat", json={**CHAT, "stream": False}))
    await until(lambda: busy.active_jobs)
    # a streamed answer sends nothing before its first chunk: the client gives up while queued
    with contextlib.suppress(httpx.ReadTimeout):
        await client.post("/api/chat", json={**CHAT, "stream": True}, timeout=0.2)
    assert (await running).status_code == 200
    # the worker is free: it claims the cancelled job and drops it (or, wrongly, runs it);
    # either way the entry leaves the stream only after that
    await until(lambda: _stream_empty(redis))
    assert len(busy.engine.seen) == 1  # type: ignore[attr-defined]


async def _stream_empty(redis: Redis) -> bool:
    """Whether the chat model's stream is empty: every job taken and finished or dropped."""
    return int(await redis.xlen(keys.job_stream(str(CHAT["model"])))) == 0


async def test_an_unexpected_failure_still_answers_in_ollamas_shape(
    api: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api import requests

    def broken(*_: object, **__: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(requests, "chat_call", broken)
    client = await api()
    response = await client.post("/api/chat", json=CHAT)
    assert response.status_code == 500
    assert response.json() == {"error": "internal error: RuntimeError"}
