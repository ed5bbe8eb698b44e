"""The official ``ollama`` Python client against a running Herd: every method it has for a
local server, and the errors it raises, on fake models (shapes, not tokens; the real model
is in ``test_ollama_python_gemma.py``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import ollama
import pytest

from tests.clients.cluster import EMBED_MODEL, PLAIN_MODEL, TOOLS_MODEL
from tests.clients.samples import WEATHER_TOOL, City, norm


def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city.

    Args:
        city: The city's name.
        unit: celsius or fahrenheit.
    """
    return f"22 degrees {unit} in {city}"


@pytest.fixture
def client(herd_url: str) -> Iterator[ollama.Client]:
    with ollama.Client(host=herd_url) as client:
        yield client


# --- generate / chat -----------------------------------------------------------------------


def test_generate_not_streamed(client: ollama.Client) -> None:
    response = client.generate(model="Fake-Tools", prompt="Say hello.")
    assert response.done is True and response.done_reason == "stop"
    assert response.response and response.response.strip()
    assert response.model == "Fake-Tools"  # echoed as sent; names match case-insensitively
    assert response.eval_count is not None and response.eval_count > 0


def test_generate_streamed_ends_with_done(client: ollama.Client) -> None:
    parts = list(client.generate(model=TOOLS_MODEL, prompt="Say hello.", stream=True))
    assert len(parts) > 2
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response or "" for p in parts).strip()


def test_chat_not_streamed_and_streamed_agree(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    whole = client.chat(model=TOOLS_MODEL, messages=messages)
    parts = list(client.chat(model=TOOLS_MODEL, messages=messages, stream=True))
    assert whole.message.role == "assistant" and whole.message.content
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].done_reason == whole.done_reason == "stop"


async def test_async_client_streams_chat(herd_url: str) -> None:
    client = ollama.AsyncClient(host=herd_url)
    try:
        stream = await client.chat(
            model=TOOLS_MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        parts = [part async for part in stream]
    finally:
        await client._client.aclose()
    assert parts[-1].done and "".join(p.message.content or "" for p in parts).strip()


def test_chat_with_a_python_function_as_tool_returns_a_tool_call(client: ollama.Client) -> None:
    response = client.chat(
        model=TOOLS_MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[get_weather],
    )
    calls = response.message.tool_calls
    assert calls, response.message
    assert calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments, dict)
    assert set(calls[0].function.arguments) <= {"city", "unit"}


def test_chat_tool_calls_arrive_in_a_stream(client: ollama.Client) -> None:
    parts = list(
        client.chat(
            model=TOOLS_MODEL,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) >= 1 and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments, dict)
    assert parts[-1].done


def test_chat_accepts_a_tool_round_trip(client: ollama.Client) -> None:
    first = client.chat(
        model=TOOLS_MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    assert first.message.tool_calls
    call = first.message.tool_calls[0]
    history: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        first.message,
        {"role": "tool", "content": "22 degrees", "tool_name": call.function.name},
    ]
    second = client.chat(model=TOOLS_MODEL, messages=history, tools=[WEATHER_TOOL])
    assert second.done and second.message.role == "assistant"


def test_chat_think_puts_reasoning_in_thinking(client: ollama.Client) -> None:
    response = client.chat(
        model=TOOLS_MODEL, messages=[{"role": "user", "content": "Why?"}], think=True
    )
    assert response.message.thinking and response.message.thinking.strip()
    assert "<think>" not in (response.message.content or "")
    assert "</think>" not in (response.message.content or "")
    plain = client.chat(
        model=TOOLS_MODEL, messages=[{"role": "user", "content": "Why?"}], think=False
    )
    assert not plain.message.thinking
    assert "<think>" not in (plain.message.content or "")


def test_generate_think_streams_thinking_before_the_answer(client: ollama.Client) -> None:
    parts = list(client.generate(model=TOOLS_MODEL, prompt="Why?", think=True, stream=True))
    thinking = "".join(p.thinking or "" for p in parts)
    assert thinking.strip()
    assert "<think>" not in "".join(p.response or "" for p in parts)


def test_chat_format_json_schema_validates(client: ollama.Client) -> None:
    response = client.chat(
        model=TOOLS_MODEL,
        messages=[{"role": "user", "content": "A city, as JSON."}],
        format=City.model_json_schema(),
    )
    City.model_validate_json(response.message.content or "")


def test_generate_format_json_parses(client: ollama.Client) -> None:
    response = client.generate(model=TOOLS_MODEL, prompt="Some JSON please.", format="json")
    assert isinstance(json.loads(response.response or ""), dict | list)


def test_generate_logprobs_cover_the_text(client: ollama.Client) -> None:
    response = client.generate(
        model=TOOLS_MODEL, prompt="Say hello.", logprobs=True, top_logprobs=2
    )
    assert response.logprobs
    assert "".join(entry.token for entry in response.logprobs) == response.response
    for entry in response.logprobs:
        assert entry.logprob <= 0
        assert entry.top_logprobs is not None and len(entry.top_logprobs) == 2


def test_chat_streamed_logprobs_arrive_with_their_chunks(client: ollama.Client) -> None:
    parts = list(
        client.chat(
            model=TOOLS_MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            logprobs=True,
            stream=True,
        )
    )
    for part in parts:
        if part.message.content:
            assert part.logprobs is not None
            assert "".join(e.token for e in part.logprobs) == part.message.content


def test_mid_stream_error_raises_response_error(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        for _ in client.generate(model=TOOLS_MODEL, prompt="[[fake:fail]]", stream=True):
            pass
    assert "fake engine failure" in info.value.error
    assert info.value.status_code == -1  # a streamed error line, after a 200


# --- embeddings ----------------------------------------------------------------------------


def test_embed_vectors_are_normalised_deterministic_and_ordered(client: ollama.Client) -> None:
    first = client.embed(model=TOOLS_MODEL, input=["the sky", "the sea"])
    again = client.embed(model=TOOLS_MODEL, input=["the sea"])
    assert len(first.embeddings) == 2
    assert all(abs(norm(v) - 1) < 1e-3 for v in first.embeddings)
    assert first.embeddings[0] != first.embeddings[1]
    assert again.embeddings[0] == pytest.approx(first.embeddings[1], abs=1e-6)
    assert first.prompt_eval_count is not None and first.prompt_eval_count > 0


def test_embed_dimensions_truncates_and_renormalises(client: ollama.Client) -> None:
    response = client.embed(model=TOOLS_MODEL, input="the sky", dimensions=8)
    (vector,) = response.embeddings
    assert len(vector) == 8 and abs(norm(vector) - 1) < 1e-3


def test_embed_on_an_embedding_only_model(client: ollama.Client) -> None:
    assert client.embed(model=EMBED_MODEL, input="x").embeddings[0]


def test_legacy_embeddings(client: ollama.Client) -> None:
    response = client.embeddings(model=TOOLS_MODEL, prompt="the sky")
    assert len(response.embedding) > 1
    assert client.embeddings(model=TOOLS_MODEL, prompt="").embedding == []


# --- model management ----------------------------------------------------------------------


def test_list_has_every_model_with_its_tag(client: ollama.Client) -> None:
    listed = client.list().models
    models = {m.model: m for m in listed}
    assert {TOOLS_MODEL, PLAIN_MODEL, EMBED_MODEL} <= set(models)
    # two workers serve fake-tools; the cluster lists it once
    assert [m.model for m in listed].count(TOOLS_MODEL) == 1
    entry = models[TOOLS_MODEL]
    assert entry.modified_at is not None and entry.details is not None
    assert entry.size is not None and entry.digest


def test_show_has_model_info_and_capabilities(client: ollama.Client) -> None:
    shown = client.show(TOOLS_MODEL)
    assert isinstance(shown.modelinfo, dict)  # the key is required by the client
    assert shown.capabilities is not None
    assert {"completion", "tools", "thinking"} <= set(shown.capabilities)
    assert shown.details is not None
    plain = client.show("fake-plain")  # tag added by the server
    assert plain.capabilities == ["completion"]


def test_ps_lists_a_loaded_model_until_it_is_unloaded(client: ollama.Client) -> None:
    loaded = client.generate(model=PLAIN_MODEL, keep_alive="10m")
    assert loaded.done and loaded.done_reason == "load"
    running = {m.model: m for m in client.ps().models}
    assert PLAIN_MODEL in running
    expires = running[PLAIN_MODEL].expires_at
    assert expires is not None
    left = expires - datetime.now(UTC)
    assert timedelta(minutes=9) < left <= timedelta(minutes=10, seconds=5)
    assert running[PLAIN_MODEL].size is not None

    unloaded = client.generate(model=PLAIN_MODEL, keep_alive=0)
    assert unloaded.done_reason == "unload"
    deadline = time.monotonic() + 5
    while PLAIN_MODEL in {m.model for m in client.ps().models}:
        assert time.monotonic() < deadline, "still listed by /api/ps 5 s after unload"
        time.sleep(0.1)


def test_copy_serves_the_copy_and_delete_removes_it(client: ollama.Client) -> None:
    copy = f"copy-{uuid.uuid4().hex[:8]}"
    assert client.copy(TOOLS_MODEL, copy).status == "success"
    assert f"{copy}:latest" in {m.model for m in client.list().models}
    assert client.show(copy).capabilities == client.show(TOOLS_MODEL).capabilities
    assert client.generate(model=copy, prompt="hi").response
    assert client.delete(copy).status == "success"
    with pytest.raises(ollama.ResponseError) as info:
        client.show(copy)
    assert info.value.status_code == 404
    assert f"{copy}:latest" not in {m.model for m in client.list().models}


def test_version_is_dotted_numeric(client: ollama.Client) -> None:
    # ollama-python has no version(); use its own HTTP client (same headers, same base URL)
    response = client._client.get("/api/version")
    assert response.status_code == 200
    major, minor, *_ = response.json()["version"].split("-")[0].split(".")
    assert major.isdigit() and minor.isdigit()


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.chat(model="nope:1b", messages=[{"role": "user", "content": "x"}]),
        lambda c: c.generate(model="nope:1b", prompt="x"),
        lambda c: c.show("nope:1b"),
        lambda c: c.embed(model="nope:1b", input="x"),
        lambda c: c.embeddings(model="nope:1b", prompt="x"),
        lambda c: c.delete("nope:1b"),
        lambda c: c.copy("nope:1b", "other"),
    ],
    ids=["chat", "generate", "show", "embed", "embeddings", "delete", "copy"],
)
def test_unknown_model_raises_404(client: ollama.Client, call: object) -> None:
    assert callable(call)
    with pytest.raises(ollama.ResponseError) as info:
        call(client)
    assert info.value.status_code == 404
    assert "nope" in info.value.error


def test_tools_on_a_model_without_tools_raises_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(
            model=PLAIN_MODEL, messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL]
        )
    assert info.value.status_code == 400
    assert info.value.error == f"registry.ollama.ai/library/{PLAIN_MODEL} does not support tools"


def test_chat_on_an_embedding_model_raises_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="fake-embed", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 400
    assert info.value.error == '"fake-embed" does not support chat'
