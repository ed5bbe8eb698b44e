"""/v1/completions over real HTTP, with the ``openai`` SDK and with httpx for the bytes."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import ApiFactory, WorkerFactory
from worker.fake_engine import FAIL_MARKER, REPLY

MODEL = "gemma3:270m"


@pytest.fixture
async def client(api: ApiFactory, worker: WorkerFactory) -> httpx.AsyncClient:
    await worker()
    return await api()


def data(text: str) -> list[Any]:
    frames = text.removesuffix("\n\n").split("\n\n")
    assert all(frame.startswith("data: ") for frame in frames)
    return [frame[6:] if frame == "data: [DONE]" else orjson.loads(frame[6:]) for frame in frames]


async def test_completion_not_streamed(sdk: openai.AsyncOpenAI) -> None:
    done = await sdk.completions.create(model=MODEL, prompt="say hi")
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    assert done.model == MODEL and done.system_fingerprint == "fp_ollama"
    (choice,) = done.choices
    assert choice.text == REPLY and choice.finish_reason == "stop" and choice.index == 0
    assert done.usage is not None
    assert done.usage.completion_tokens == len(REPLY.split(" "))
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


async def test_completion_streamed_with_usage(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.completions.create(
        model=MODEL,
        prompt="say hi",
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    *texts, usage = chunks
    assert "".join(chunk.choices[0].text for chunk in texts) == "Hello from the herd. "
    # the finish reason rides on the last text chunk, as in Ollama
    assert [chunk.choices[0].finish_reason for chunk in texts] == [None] * 4 + ["length"]
    assert all(chunk.usage is not None and chunk.usage.total_tokens == 0 for chunk in texts)
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 4


async def test_stream_framing(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": "x", "stream": True, "max_tokens": 1}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        text = "".join([part async for part in response.aiter_text()])
    assert response.headers["content-type"] == "text/event-stream"
    first, last, done = data(text)
    assert first["choices"] == [{"text": "Hello ", "index": 0, "finish_reason": None}]
    assert last["choices"][0]["finish_reason"] == "length"
    assert "usage" not in first
    assert done == "[DONE]"


async def test_mid_stream_error_is_an_error_event(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": FAIL_MARKER, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        text = "".join([part async for part in response.aiter_text()])
    *texts, error = data(text)
    assert response.status_code == 200 and len(texts) == 2
    assert error["error"]["message"] == "fake engine failure"
    assert error["error"]["type"] == "api_error"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": MODEL, "prompt": ["a", "b"]}, 400, "CompletionRequest.prompt"),
        ({"model": MODEL, "prompt": "x", "stop": ["a", 1]}, 400, "invalid type for 'stop'"),
        ({"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
    ],
)
async def test_errors(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, message: str
) -> None:
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == ("invalid_request_error" if status == 400 else "not_found_error")


async def test_unknown_model_raises_not_found_in_the_sdk(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
        await sdk.completions.create(model="nope", prompt="x")


async def test_suffix_is_accepted(sdk: openai.AsyncOpenAI) -> None:
    done = await sdk.completions.create(model=MODEL, prompt="def f(", suffix="\n    return x")
    assert done.choices[0].finish_reason == "stop"


async def test_logprobs_in_the_completions_shape(sdk: openai.AsyncOpenAI) -> None:
    done = await sdk.completions.create(model=MODEL, prompt="x", logprobs=2, max_tokens=3)
    logprobs = done.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert "".join(logprobs.tokens) == done.choices[0].text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens)
    assert logprobs.top_logprobs is not None
    assert all(0 < len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset is not None and logprobs.text_offset[0] == 0
