"""/v1/chat/completions over real HTTP (the official ``openai`` SDK where it checks the
shape, httpx where the bytes matter), against real Redis and FakeEngine workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam
from redis.asyncio import Redis

from shared import keys
from tests.conftest import ApiFactory, WorkerFactory
from tests.polling import until
from worker.fake_engine import FAIL_MARKER, REPLY

MODEL = "gemma3:270m"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
IMAGE = "data:image/png;base64,iVBORw0KGgo="
CHAT: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def sse(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[httpx.Response, str]:
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        text = "".join([part async for part in response.aiter_text()])
    return response, text


def events(text: str) -> list[Any]:
    """The ``data:`` payloads, checking the framing: every event is one line + a blank one."""
    assert text.endswith("\n\n")
    frames = text[:-2].split("\n\n")
    assert all(frame.startswith("data: ") and "\n" not in frame for frame in frames)
    return [frame[6:] if frame == "data: [DONE]" else orjson.loads(frame[6:]) for frame in frames]


@pytest.fixture
async def client(api: ApiFactory, worker: WorkerFactory) -> AsyncIterator[httpx.AsyncClient]:
    await worker(fake_models=[MODEL, "team/tiny:1"])
    yield await api()


async def test_chat_not_streamed(sdk: openai.AsyncOpenAI) -> None:
    done = await sdk.chat.completions.create(model=MODEL, messages=HI)
    assert done.object == "chat.completion"
    assert done.id.startswith("chatcmpl-")
    assert done.system_fingerprint == "fp_ollama"
    assert done.model == MODEL
    assert abs(done.created - time.time()) < 60
    (choice,) = done.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.content == REPLY
    assert done.usage is not None
    assert done.usage.completion_tokens == len(REPLY.split(" "))
    assert done.usage.prompt_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


async def test_max_tokens_is_num_predict_and_finishes_with_length(
    sdk: openai.AsyncOpenAI,
) -> None:
    done = await sdk.chat.completions.create(
        model=MODEL,
        messages=HI,
        max_tokens=3,
    )
    assert done.choices[0].finish_reason == "length"
    assert done.choices[0].message.content == "Hello from the "
    assert done.usage is not None and done.usage.completion_tokens == 3


async def test_chat_streamed_with_the_sdk(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len({chunk.id for chunk in chunks}) == 1
    assert len({chunk.created for chunk in chunks}) == 1
    *content, finish, usage = chunks
    assert content[0].choices[0].delta.role == "assistant"
    assert all(chunk.choices[0].delta.role is None for chunk in content[1:])
    assert all(chunk.choices[0].finish_reason is None for chunk in content)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in content) == REPLY
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None and finish.usage is None
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == len(content)


async def test_stream_framing_and_shapes(client: httpx.AsyncClient) -> None:
    response, text = await sse(client, {**CHAT, "stream": True, "max_tokens": 2})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    *chunks, last = events(text)
    assert last == "[DONE]"
    first, second, finish = chunks  # two content chunks, the finish chunk, no usage
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "Hello "}
    assert second["choices"][0]["delta"] == {"content": "from "}
    assert first["choices"][0]["finish_reason"] is None
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["system_fingerprint"] == "fp_ollama" and chunk["model"] == MODEL
        assert "usage" not in chunk


async def test_usage_chunk_has_no_choices(client: httpx.AsyncClient) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    _, text = await sse(client, body)
    *_, usage, done = events(text)
    assert done == "[DONE]"
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == len(REPLY.split(" "))


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_raises_not_found(sdk: openai.AsyncOpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.chat.completions.create(
            model="nope",
            messages=HI,
            stream=stream,
        )
    assert caught.value.status_code == 404
    assert caught.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }


async def test_bad_request_raises_bad_request(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model=MODEL, messages=[])
    assert caught.value.body == {
        "message": "[] is too short - 'messages'",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": MODEL}, "[] is too short - 'messages'"),
        ({"messages": HI}, "model is required"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "messages": [{"role": "user"}]}, "invalid message content type: <nil>"),
        ({**CHAT, "messages": [{"role": "user", "content": 3}]}, "content type: float64"),
        ({**CHAT, "messages": [{"role": "user", "content": [{"type": "x"}]}]}, "format"),
        (
            {
                **CHAT,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}],
                    }
                ],
            },
            "image URLs are not currently supported, please use base64 encoded data instead",
        ),
        (
            {
                **CHAT,
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": "data:x"}]}
                ],
            },
            "invalid image input",
        ),
        (
            {
                **CHAT,
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}],
                    }
                ],
            },
            "invalid tool call arguments",
        ),
        (
            {
                **CHAT,
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": IMAGE}]}
                ],
            },
            "does not support vision",  # the image reached the native checks
        ),
        (
            {**CHAT, "reasoning_effort": "huge"},
            'invalid reasoning value: "huge" (must be "minimal", "low", "medium", "high", '
            '"xhigh", "ultra", "max", or "none")',
        ),
    ],
)
async def test_request_errors_are_400_in_openais_shape(
    client: httpx.AsyncClient, body: dict[str, Any], message: str
) -> None:
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None and error["code"] is None


async def test_empty_and_malformed_bodies(client: httpx.AsyncClient) -> None:
    empty = await client.post("/v1/chat/completions", content=b"")
    assert empty.status_code == 400 and empty.json()["error"]["message"] == "EOF"
    broken = await client.post("/v1/chat/completions", content=b"{nope")
    assert broken.status_code == 400
    assert broken.json()["error"]["type"] == "invalid_request_error"


async def test_image_parts_and_null_content_with_tool_calls_are_accepted(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    await worker(fake_capabilities=["completion", "vision", "tools"])
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": IMAGE},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "look", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ]
    response = await client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": messages}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


async def test_mid_stream_error_is_an_error_event(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": FAIL_MARKER}], "stream": True}
    response, text = await sse(client, body)
    assert response.status_code == 200
    *chunks, error = events(text)
    assert "[DONE]" not in chunks
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert error == {
        "error": {
            "message": "fake engine failure",
            "type": "api_error",
            "param": None,
            "code": None,
        }
    }


async def test_mid_stream_error_raises_in_the_sdk(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": FAIL_MARKER}],
        stream=True,
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="fake engine failure"):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert seen, "the chunks before the failure arrive"


async def test_error_before_the_stream_starts_is_a_status(client: httpx.AsyncClient) -> None:
    response, text = await sse(client, {**CHAT, "model": "nope", "stream": True})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert json.loads(text)["error"]["type"] == "not_found_error"


async def test_stream_disconnect_stops_the_worker(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    slow = await worker(fake_token_delay_s=0.3)
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
    await until(
        lambda: slow.active_jobs == 0,
        timeout_s=2,
        message="the worker still generates for a client that left",
    )


async def test_non_streamed_disconnect_cancels_too(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    slow = await worker(fake_token_delay_s=0.3)
    with contextlib.suppress(httpx.ReadTimeout):
        await client.post("/v1/chat/completions", json=CHAT, timeout=0.5)
    await until(
        lambda: slow.active_jobs == 0,
        timeout_s=2,
        message="the worker still generates for a client that left",
    )


async def test_a_queued_stream_whose_client_left_never_runs(
    redis: Redis, api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    busy = await worker(num_parallel=1, fake_token_delay_s=0.05)
    running = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    await until(lambda: busy.active_jobs)
    # nothing is sent before the first token, so the client gives up while queued
    with contextlib.suppress(httpx.ReadTimeout):
        await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, timeout=0.2)
    assert (await running).status_code == 200
    # the worker is free: it claims the cancelled job and drops it (or, wrongly, runs it);
    # either way the entry leaves the stream only after that
    await until(lambda: _stream_empty(redis))
    assert len(busy.engine.seen) == 1  # type: ignore[attr-defined]


async def _stream_empty(redis: Redis) -> bool:
    """Whether the model's stream is empty: every job taken and finished or dropped."""
    return int(await redis.xlen(keys.job_stream(MODEL))) == 0
