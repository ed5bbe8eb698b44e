"""LangChain's ``ChatOllama`` (built on ollama-python, always streaming) against Herd."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from pydantic import BaseModel, Field

from tests.clients.cluster import GEMMA, TOOLS_MODEL


class City(BaseModel):
    """A city and how many people live there."""

    name: str = Field(max_length=24)
    population: int


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"22 degrees in {city}"


ChatFactory = Callable[..., ChatOllama]


@pytest.fixture
def make_chat() -> Iterator[ChatFactory]:
    """``make_chat(url, model, **kwargs)``; ChatOllama never closes its HTTP client, we do."""
    made: list[ChatOllama] = []

    def make(url: str, model: str = TOOLS_MODEL, **kwargs: Any) -> ChatOllama:
        chat = ChatOllama(model=model, base_url=url, **kwargs)
        made.append(chat)
        return chat

    yield make
    for chat in made:
        chat._client._client.close()  # ollama.Client.close is untyped


def test_invoke_has_text_usage_and_metadata(herd_url: str, make_chat: ChatFactory) -> None:
    answer = make_chat(herd_url).invoke("Say hello.")
    assert isinstance(answer, AIMessage) and isinstance(answer.content, str)
    assert answer.content.strip()
    # usage needs both prompt_eval_count and eval_count in the final chunk
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] > 0
    assert answer.usage_metadata["input_tokens"] > 0
    assert answer.response_metadata["done_reason"] == "stop"
    assert answer.response_metadata["model"] == TOOLS_MODEL


def test_stream_concatenates_to_the_invoke_text(herd_url: str, make_chat: ChatFactory) -> None:
    model = make_chat(herd_url)
    chunks = list(model.stream("Say hello."))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    text = "".join(str(c.content) for c in chunks)
    assert text == model.invoke("Say hello.").content


def test_bind_tools_parses_tool_calls(herd_url: str, make_chat: ChatFactory) -> None:
    answer = make_chat(herd_url).bind_tools([get_weather]).invoke("Weather in Paris?")
    assert isinstance(answer, AIMessage)
    assert answer.tool_calls, answer
    call = answer.tool_calls[0]
    assert call["name"] == "get_weather"
    assert isinstance(call["args"], dict)
    assert not answer.invalid_tool_calls


def test_with_structured_output_json_schema(herd_url: str, make_chat: ChatFactory) -> None:
    structured = make_chat(herd_url).with_structured_output(City, method="json_schema")
    city = structured.invoke("A city, please.")
    assert isinstance(city, City)


def test_reasoning_goes_to_additional_kwargs(herd_url: str, make_chat: ChatFactory) -> None:
    answer = make_chat(herd_url, reasoning=True).invoke("Why?")
    assert answer.additional_kwargs.get("reasoning_content"), answer
    assert "<think>" not in str(answer.content)


@pytest.mark.e2e
def test_gemma_invoke_and_structured_output(gemma_url: str, make_chat: ChatFactory) -> None:
    short = make_chat(gemma_url, GEMMA, temperature=0, seed=7, num_predict=12)
    answer = short.invoke("Say hi.")
    assert str(answer.content).strip()
    assert answer.usage_metadata is not None
    assert 0 < answer.usage_metadata["output_tokens"] <= 12
    # the constrained JSON ends (about 30 tokens) well before the limit
    model = make_chat(gemma_url, GEMMA, temperature=0, seed=7, num_predict=64)
    city = model.with_structured_output(City, method="json_schema").invoke(
        "Give me a city and its population."
    )
    assert isinstance(city, City)
