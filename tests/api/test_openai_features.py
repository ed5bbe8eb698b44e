"""Tools, reasoning, structured output and logprobs through /v1/chat/completions, with the
``openai`` SDK. The FakeEngine writes ``<think>`` and ``<tool_call>`` markup and JSON for a
format; the worker parses them like a real model's output."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.conftest import ApiFactory, WorkerFactory
from worker.fake_engine import REPLY, THOUGHTS

MODEL = "gemma3:270m"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "weather in Paris?"}]
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture
async def client(api: ApiFactory, worker: WorkerFactory) -> httpx.AsyncClient:
    await worker()
    return await api()


async def test_tool_call_not_streamed(sdk: openai.AsyncOpenAI) -> None:
    done = await sdk.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER])
    (choice,) = done.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)


async def test_tool_call_streamed_arrives_whole_in_one_delta(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=HI, tools=[WEATHER], stream=True
    )
    chunks = [chunk async for chunk in stream]
    with_calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(with_calls) == 1
    (call,) = with_calls[0].choices[0].delta.tool_calls or []
    assert call.index == 0 and call.id and call.type == "function"
    assert call.function is not None and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments or "")) == {"city", "days"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[0].choices[0].delta.role == "assistant"


async def test_tool_result_round_trip(sdk: openai.AsyncOpenAI) -> None:
    first = await sdk.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER])
    call = (first.choices[0].message.tool_calls or [])[0]
    history: list[ChatCompletionMessageParam] = [
        *HI,
        first.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = await sdk.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == REPLY


async def test_reasoning_not_streamed(sdk: openai.AsyncOpenAI) -> None:
    done = await sdk.chat.completions.create(model=MODEL, messages=HI, reasoning_effort="low")
    message = done.choices[0].message
    assert message.content == REPLY
    assert (message.model_extra or {}).get("reasoning") == THOUGHTS
    plain = await sdk.chat.completions.create(model=MODEL, messages=HI, reasoning_effort="none")
    assert "reasoning" not in (plain.choices[0].message.model_extra or {})


async def test_reasoning_streamed_comes_before_content(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=HI, reasoning_effort="high", stream=True
    )
    deltas = [chunk.choices[0].delta async for chunk in stream]
    reasoning = [(d.model_extra or {}).get("reasoning", "") for d in deltas]
    content = [d.content or "" for d in deltas]
    assert "".join(reasoning) == THOUGHTS and "".join(content) == REPLY
    last_reasoning = max(i for i, text in enumerate(reasoning) if text)
    first_content = min(i for i, text in enumerate(content) if text)
    assert last_reasoning < first_content
    assert deltas[0].role == "assistant"
    assert all(d.role is None for d in deltas[1:])


async def test_json_object(sdk: openai.AsyncOpenAI) -> None:
    done = await sdk.chat.completions.create(
        model=MODEL, messages=HI, response_format={"type": "json_object"}
    )
    assert json.loads(done.choices[0].message.content or "") == {"reply": REPLY}


async def test_json_schema(sdk: openai.AsyncOpenAI) -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    done = await sdk.chat.completions.create(
        model=MODEL,
        messages=HI,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    document = json.loads(done.choices[0].message.content or "")
    assert isinstance(document["name"], str) and isinstance(document["age"], int)


async def test_logprobs_not_streamed(sdk: openai.AsyncOpenAI) -> None:
    done = await sdk.chat.completions.create(
        model=MODEL, messages=HI, logprobs=True, top_logprobs=2, max_tokens=3
    )
    logprobs = done.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert "".join(entry.token for entry in logprobs.content) == done.choices[0].message.content
    assert all(len(entry.top_logprobs) == 2 for entry in logprobs.content)
    assert all(entry.logprob <= 0 for entry in logprobs.content)


async def test_logprobs_streamed_ride_on_their_chunks(client: httpx.AsyncClient) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "logprobs": True,
        "max_tokens": 2,
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        text = "".join([part async for part in response.aiter_text()])
    chunks = [orjson.loads(f[6:]) for f in text.split("\n\n") if f and f != "data: [DONE]"]
    content = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(content) == 2
    for chunk in content:
        choice = chunk["choices"][0]
        assert [e["token"] for e in choice["logprobs"]["content"]] == [choice["delta"]["content"]]
