"""Response shapes clients parse (ollama-api.md §1, §3.2, §4.2, §6, §9), checked on the raw
HTTP answers of a running Herd."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.clients.cluster import PLAIN_MODEL, TOOLS_MODEL
from tests.contract.expectations import TOOL, USER

#: RFC 3339, up to 9 fractional digits, "Z" or an offset (Go's time.Time in JSON).
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "eval_count")


@pytest.fixture(scope="module")
def http(herd_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=herd_url, timeout=15) as client:
        yield client


def _ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_generate_chunks(http: httpx.Client) -> None:
    chunks = _ndjson(http.post("/api/generate", json={"model": "fake-tools", "prompt": "hi"}))
    for chunk in chunks:
        assert chunk["model"] == "fake-tools"  # as sent, not normalised
        assert RFC3339.match(chunk["created_at"]) and chunk["created_at"].endswith("Z")
        assert isinstance(chunk["response"], str)
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert all(isinstance(final[key], int) and final[key] > 0 for key in METRICS)
    assert isinstance(final["context"], list)
    assert all(not any(k in c for k in METRICS) for c in chunks[:-1])


def test_chat_chunks_always_carry_a_message(http: httpx.Client) -> None:
    chunks = _ndjson(http.post("/api/chat", json={"model": TOOLS_MODEL, "messages": USER}))
    for chunk in chunks:
        assert chunk["message"]["role"] == "assistant"
        assert isinstance(chunk["message"]["content"], str)
    assert "context" not in chunks[-1]
    assert chunks[-1]["done_reason"] == "stop"


def test_chat_tool_calls_have_ids_and_object_arguments(http: httpx.Client) -> None:
    body = {"model": TOOLS_MODEL, "messages": USER, "tools": [TOOL], "stream": False}
    answer = http.post("/api/chat", json=body).json()
    (call, *_) = answer["message"]["tool_calls"]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"]), call
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["index"] == 0
    assert isinstance(call["function"]["arguments"], dict)


def test_tags(http: httpx.Client) -> None:
    models = http.get("/api/tags").json()["models"]
    for model in models:
        assert model["name"] == model["model"] and ":" in model["name"]
        assert re.fullmatch(r"[0-9a-f]{64}", model["digest"]), model["digest"]
        assert RFC3339.match(model["modified_at"])
        assert isinstance(model["size"], int)
        assert {"format", "family", "parameter_size", "quantization_level"} <= set(model["details"])
    stamps = [datetime.fromisoformat(m["modified_at"]) for m in models]
    assert stamps == sorted(stamps, reverse=True)  # newest first


def test_ps_after_a_load(http: httpx.Client) -> None:
    loaded = http.post("/api/generate", json={"model": PLAIN_MODEL, "keep_alive": "1h"})
    assert loaded.json()["done_reason"] == "load"
    models = http.get("/api/ps").json()["models"]
    entry = next(m for m in models if m["model"] == PLAIN_MODEL)
    assert entry["name"] == PLAIN_MODEL
    assert RFC3339.match(entry["expires_at"])
    datetime.fromisoformat(entry["expires_at"])  # what Open WebUI does
    assert isinstance(entry["size"], int) and isinstance(entry["size_vram"], int)
    assert isinstance(entry["context_length"], int) and entry["context_length"] > 0
    assert "details" in entry and "digest" in entry
    forever = http.post("/api/generate", json={"model": PLAIN_MODEL, "keep_alive": -1})
    assert forever.json()["done_reason"] == "load"
    entry = next(m for m in http.get("/api/ps").json()["models"] if m["model"] == PLAIN_MODEL)
    assert datetime.fromisoformat(entry["expires_at"]).year > 2200  # "forever": ~292 years


def test_show(http: httpx.Client) -> None:
    shown = http.post("/api/show", json={"model": TOOLS_MODEL}).json()
    assert isinstance(shown["model_info"], dict)
    assert {"completion", "tools", "thinking", "insert", "embedding"} <= set(shown["capabilities"])
    assert isinstance(shown["details"], dict)
    assert RFC3339.match(shown["modified_at"])


def test_version_is_dotted_numeric(http: httpx.Client) -> None:
    version = http.get("/api/version").json()["version"]
    # Open WebUI: re.sub(r"^v|-.*", "", v).split(".") → ints
    assert all(part.isdigit() for part in re.sub(r"^v|-.*", "", version).split("."))


def test_v1_models(http: httpx.Client) -> None:
    listing = http.get("/v1/models").json()
    assert listing["object"] == "list" and isinstance(listing["data"], list)
    entry = next(m for m in listing["data"] if m["id"] == TOOLS_MODEL)
    assert entry["object"] == "model" and entry["owned_by"] == "library"
    assert isinstance(entry["created"], int)


def test_v1_chat_stream_is_sse_ending_in_done(http: httpx.Client) -> None:
    body = {"model": TOOLS_MODEL, "messages": USER, "stream": True}
    response = http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["system_fingerprint"] == "fp_ollama" for c in chunks)
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
