"""/api/generate and /api/chat over real HTTP with FakeEngine workers: thinking, tool
calls, logprobs, structured output, load and unload, and the capability errors."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ApiFactory, WorkerFactory
from tests.polling import until
from worker.fake_engine import REPLY, FakeEngine

PLAIN = "registry.ollama.ai/library/plain:latest"
CHAT = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}]}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string"}},
        },
    },
}


async def _lines(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[Any]:
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return [orjson.loads(line) async for line in response.aiter_lines() if line]


@pytest.fixture
async def client(api: ApiFactory, worker: WorkerFactory) -> httpx.AsyncClient:
    client = await api()
    await worker()
    return client


async def test_thinking_streams_apart_and_aggregates(client: httpx.AsyncClient) -> None:
    lines = await _lines(client, "/api/chat", {**CHAT, "think": True})
    messages = [line["message"] for line in lines]
    thinking = "".join(m.get("thinking", "") for m in messages)
    content = "".join(m["content"] for m in messages)
    assert thinking == "Fake thoughts." and content == REPLY
    assert all(m.get("thinking") or m["content"] for m in messages[:-1])  # no empty chunks
    whole = (await client.post("/api/chat", json={**CHAT, "think": True, "stream": False})).json()
    assert whole["message"] == {"role": "assistant", "content": REPLY, "thinking": thinking}
    assert whole["done"] is True and whole["done_reason"] == "stop"


async def test_generate_thinking_has_its_own_field(client: httpx.AsyncClient) -> None:
    body = {"model": "gemma3:270m", "prompt": "hi", "think": "low", "stream": False}
    data = (await client.post("/api/generate", json=body)).json()
    assert data["thinking"] == "Fake thoughts." and data["response"] == REPLY


async def test_tool_calls_are_objects_with_ids(client: httpx.AsyncClient) -> None:
    lines = await _lines(client, "/api/chat", {**CHAT, "tools": [TOOL]})
    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    assert len(calls) == 1
    assert re.fullmatch(r"call_[a-z0-9]{8}", calls[0]["id"])
    assert calls[0]["function"] == {
        "index": 0,
        "name": "get_weather",
        "arguments": {"city": calls[0]["function"]["arguments"]["city"]},
    }
    assert isinstance(calls[0]["function"]["arguments"]["city"], str)
    whole = (await client.post("/api/chat", json={**CHAT, "tools": [TOOL], "stream": False})).json()
    assert [c["function"]["name"] for c in whole["message"]["tool_calls"]] == ["get_weather"]
    assert whole["message"]["content"] == ""


async def test_a_tool_result_round_trip_is_accepted(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "cold", "tool_name": "get_weather"},
    ]
    body = {"model": "gemma3:270m", "messages": messages, "tools": [TOOL], "stream": False}
    data = (await client.post("/api/chat", json=body)).json()
    assert data["message"]["content"] == REPLY  # answers the result instead of calling again


async def test_logprobs_per_chunk_and_accumulated(client: httpx.AsyncClient) -> None:
    body = {"model": "gemma3:270m", "prompt": "hi", "logprobs": True, "top_logprobs": 2}
    lines = await _lines(client, "/api/generate", {**body, "options": {"num_predict": 3}})
    streamed = [entry for line in lines for entry in line.get("logprobs", [])]
    assert [entry["token"] for entry in streamed] == ["Hello ", "from ", "the "]
    assert all(len(entry["top_logprobs"]) == 2 for entry in streamed)
    assert all(isinstance(entry["logprob"], float) for entry in streamed)
    data = (
        await client.post(
            "/api/generate", json={**body, "stream": False, "options": {"num_predict": 3}}
        )
    ).json()
    assert [entry["token"] for entry in data["logprobs"]] == ["Hello ", "from ", "the "]
    plain = await client.post("/api/generate", json={"model": "gemma3:270m", "prompt": "x"})
    assert all("logprobs" not in orjson.loads(line) for line in plain.text.splitlines())


@pytest.mark.parametrize(
    "fmt", ["json", {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}]
)
async def test_structured_output(client: httpx.AsyncClient, fmt: object) -> None:
    data = (await client.post("/api/chat", json={**CHAT, "format": fmt, "stream": False})).json()
    parsed = orjson.loads(data["message"]["content"])
    assert isinstance(parsed, dict)
    if isinstance(fmt, dict):
        assert isinstance(parsed["n"], int)


@pytest.mark.parametrize(
    ("fmt", "raw"), [("yaml", '\\"yaml\\"'), (False, "false"), (0, "0"), ([], "[]")]
)
async def test_a_format_of_the_wrong_kind_is_a_400(
    client: httpx.AsyncClient, fmt: object, raw: str
) -> None:
    # Ollama's text; its status is a 500 (the runner fails it), though the client erred
    response = await client.post("/api/chat", json={**CHAT, "format": fmt})
    assert response.status_code == 400
    assert response.json() == {
        "error": f'invalid format: "{raw}"; expected "json" or a valid JSON Schema object'
    }


async def test_load_runs_on_a_worker_and_unload_reaches_it(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    engine = FakeEngine(["first:latest", "second:latest"], 0.001)
    await worker(engine=engine)
    assert ("load", "second:latest") not in engine.history
    # an empty prompt loads, and answers one JSON object even though streaming is the default
    response = await client.post("/api/generate", json={"model": "second"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    load = response.json()
    assert (load["model"], load["response"], load["done"], load["done_reason"]) == (
        "second",
        "",
        True,
        "load",
    )
    assert ("load", "second:latest") in engine.history
    loaded = (await client.get("/api/ps")).json()["models"]
    assert "second:latest" in {m["name"] for m in loaded}
    # keep_alive 0 with nothing to generate unloads it wherever it is loaded
    unload = await client.post("/api/chat", json={"model": "second", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"
    assert unload.json()["message"] == {"role": "assistant", "content": ""}
    await until(lambda: ("unload", "second:latest") in engine.history)


async def test_load_with_keep_alive_forever_shows_in_ps(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    await worker(engine=FakeEngine(["first:latest", "second:latest"], 0.001))
    response = await client.post("/api/chat", json={"model": "second", "keep_alive": -1})
    assert response.json()["done_reason"] == "load"
    entry = next(
        m for m in (await client.get("/api/ps")).json()["models"] if m["name"] == "second:latest"
    )
    assert int(entry["expires_at"][:4]) > 2200  # "forever", as Ollama prints it


async def _two_workers(api: ApiFactory, worker: WorkerFactory) -> httpx.AsyncClient:
    client = await api()
    await worker(
        worker_id="w-plain", fake_models=["plain:latest"], fake_capabilities=["completion"]
    )
    await worker(
        worker_id="w-embed", fake_models=["embedder:latest"], fake_capabilities=["embedding"]
    )
    return client


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        (
            "/api/generate",
            {"model": "embedder", "prompt": "x"},
            400,
            '"embedder" does not support generate',
        ),
        (
            "/api/chat",
            {"model": "embedder", "messages": []},
            400,
            '"embedder" does not support chat',
        ),
        (
            "/api/chat",
            {"model": "plain", "messages": [{"role": "user"}], "tools": [TOOL]},
            400,
            f"{PLAIN} does not support tools",
        ),
        (
            "/api/generate",
            {"model": "plain", "prompt": "x", "suffix": "y"},
            400,
            f"{PLAIN} does not support insert",
        ),
        (
            "/api/generate",
            {"model": "plain", "prompt": "x", "think": True},
            400,
            '"plain" does not support thinking',
        ),
        (
            "/api/generate",
            {"model": "plain", "prompt": "x", "images": ["iVBORw0KGgo="]},
            400,
            f"{PLAIN} does not support vision",
        ),
        (
            "/api/generate",
            {"model": "plain", "prompt": "x", "images": ["not base64"]},
            400,
            "illegal base64 data at input byte 3",
        ),
        (
            "/api/generate",
            {"model": "plain", "prompt": "x", "think": "extra"},
            400,
            'invalid think value: "extra" (must be "high", "medium", "low", "max", true, or false)',
        ),
        (
            "/api/generate",
            {"model": "plain", "prompt": "x", "keep_alive": "10"},
            400,
            'time: missing unit in duration "10"',
        ),
        (
            "/api/chat",
            {"model": "plain", "messages": [], "top_logprobs": 99},
            400,
            "top_logprobs must be between 0 and 20",
        ),
        (
            "/api/chat",
            {"model": "plain", "messages": [], "options": {"stop": "x"}},
            400,
            'option "stop" must be of type array',
        ),
    ],
)
async def test_capability_and_field_errors(
    api: ApiFactory,
    worker: WorkerFactory,
    path: str,
    body: dict[str, Any],
    status: int,
    error: str,
) -> None:
    client = await _two_workers(api, worker)
    response = await client.post(path, json=body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": error}


async def test_the_python_clients_chat_body_is_accepted(client: httpx.AsyncClient) -> None:
    # what ollama-python sends: tools always present (empty), falsy fields dropped
    body = {
        "model": "gemma3:270m",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}],
        "tools": [],
        "stream": False,
        "format": "",
        "options": {"numa": False, "temperature": 0},
        "keep_alive": "5m",
    }
    response = await client.post("/api/chat", json=body)
    assert response.status_code == 200 and response.json()["message"]["content"] == REPLY


async def test_unknown_fields_and_nulls_are_ignored(client: httpx.AsyncClient) -> None:
    body = {
        "model": "gemma3:270m",
        "prompt": "hi",
        "stream": False,
        "images": None,
        "think": None,
        "keep_alive": None,
        "system": None,
        "whatever": {"nested": [1]},
        "_debug_render_only": False,
    }
    response = await client.post("/api/generate", json=body)
    assert response.status_code == 200 and response.json()["response"] == REPLY


async def test_a_bool_field_given_a_string_is_a_decoding_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/generate", json={"model": "x", "stream": "false"})
    assert response.status_code == 400
    assert (
        "cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"
        in (response.json()["error"])
    )


async def test_a_nested_field_of_the_wrong_type_names_its_go_path(
    client: httpx.AsyncClient,
) -> None:
    body = {"model": "gemma3:270m", "messages": [{"role": "user", "content": 5}]}
    response = await client.post("/api/chat", json=body)
    assert response.status_code == 400
    assert response.json() == {
        "error": "json: cannot unmarshal number into Go struct field "
        "ChatRequest.messages.content of type string"
    }
