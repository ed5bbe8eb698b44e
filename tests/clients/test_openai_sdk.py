"""The ``openai`` SDK against Herd's ``/v1`` layer (ollama-api.md §9)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field

from tests.clients.cluster import GEMMA, PLAIN_MODEL, TOOLS_MODEL

TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string"}},
        },
    },
}
HELLO: Any = [{"role": "user", "content": "Say hello."}]


class City(BaseModel):
    name: str = Field(max_length=24)
    population: int


def _schema_format() -> Any:
    return {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": City.model_json_schema()},
    }


@pytest.fixture
def client(herd_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{herd_url}/v1", api_key="ollama", max_retries=0) as client:
        yield client


def test_chat_not_streamed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=TOOLS_MODEL, messages=HELLO)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == TOOLS_MODEL
    assert completion.system_fingerprint == "fp_ollama"
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_chat_streamed_role_first_then_content_finish_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in with_choices[1:])
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text.strip()
    finish = with_choices[-1].choices[0]
    assert finish.finish_reason == "stop" and not finish.delta.content
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=TOOLS_MODEL, messages=HELLO, stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_tools_give_tool_calls_with_json_string_arguments(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[TOOL],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)

    # the result goes back as a tool message naming the call
    follow = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "22 degrees"},
        ],
        tools=[TOOL],
    )
    assert follow.choices[0].message.role == "assistant"


def test_chat_tools_streamed_arrive_whole_in_one_delta(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[TOOL],
            stream=True,
        )
    )
    calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert calls
    first = calls[0]
    assert first.id and first.id.startswith("call_") and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"
    assert isinstance(json.loads(first.function.arguments or ""), dict)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_chat_response_format_json_schema(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[{"role": "user", "content": "A city as JSON."}],
        response_format=_schema_format(),
    )
    City.model_validate_json(completion.choices[0].message.content or "")


def test_chat_response_format_json_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=TOOLS_MODEL, messages=HELLO, response_format={"type": "json_object"}
    )
    json.loads(completion.choices[0].message.content or "")


def test_chat_reasoning_effort_gives_reasoning(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=TOOLS_MODEL, messages=HELLO, reasoning_effort="low"
    )
    message = completion.choices[0].message
    extra = message.model_extra or {}
    assert extra.get("reasoning"), message  # Ollama's field name (not reasoning_content)
    assert "<think>" not in (message.content or "")


def test_chat_max_tokens_limits_and_reports_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=TOOLS_MODEL, messages=HELLO, max_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 2


def test_chat_logprobs(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=TOOLS_MODEL, messages=HELLO, logprobs=True, top_logprobs=2
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)


def test_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=TOOLS_MODEL, prompt="Say hello.")
    assert completion.id.startswith("cmpl-") and completion.object == "text_completion"
    assert completion.choices[0].text.strip()
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    chunks = list(client.completions.create(model=TOOLS_MODEL, prompt="Say hello.", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == completion.choices[0].text
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "stop"


def test_embeddings_float_and_default_base64(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(
        model=TOOLS_MODEL, input=["the sky", "the sea"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1]
    vector = floats.data[0].embedding
    assert abs(math.sqrt(sum(x * x for x in vector)) - 1) < 1e-3
    assert floats.usage.prompt_tokens > 0
    # without encoding_format the SDK asks for base64 and decodes it itself
    decoded = client.embeddings.create(model=TOOLS_MODEL, input="the sky")
    assert decoded.data[0].embedding == pytest.approx(vector, abs=1e-6)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {TOOLS_MODEL, PLAIN_MODEL} <= set(models)
    assert models[TOOLS_MODEL].object == "model"
    assert models[TOOLS_MODEL].owned_by == "library"
    retrieved = client.models.retrieve(TOOLS_MODEL)
    assert retrieved.id == TOOLS_MODEL and retrieved.created == models[TOOLS_MODEL].created


def test_unknown_model_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as chat:
        client.chat.completions.create(model="nope", messages=HELLO)
    assert chat.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError) as model:
        client.models.retrieve("nope")
    assert "model 'nope:latest' not found" in model.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_bad_requests_raise_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(model=PLAIN_MODEL, messages=HELLO, tools=[TOOL])
    assert isinstance(tools.value.body, dict)
    assert tools.value.body["type"] == "invalid_request_error"
    assert tools.value.body["message"] == (
        f"registry.ollama.ai/library/{PLAIN_MODEL} does not support tools"
    )
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model=TOOLS_MODEL, messages=[])
    assert "[] is too short - 'messages'" in empty.value.message


@pytest.mark.e2e
def test_gemma_chat_and_schema_on_v1(gemma_url: str) -> None:
    with openai.OpenAI(base_url=f"{gemma_url}/v1", api_key="x", max_retries=0) as client:
        completion = client.chat.completions.create(
            model=GEMMA, messages=HELLO, max_tokens=8, temperature=0, seed=7
        )
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.prompt_tokens > 5
        assert 0 < completion.usage.completion_tokens <= 8
        structured = client.chat.completions.create(
            model=GEMMA,
            messages=[{"role": "user", "content": "Give me a city and its population."}],
            response_format=_schema_format(),
            max_tokens=64,
            temperature=0,
            seed=7,
        )
        City.model_validate_json(structured.choices[0].message.content or "")
