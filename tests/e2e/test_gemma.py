"""The end-to-end tier: `herd api` and `herd worker` as real processes, the real gemma3:270m
through llama.cpp, driven by the official `ollama` Python client."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import ollama
import pytest

from cli.ports import free_port
from tests.conftest import wait_for_http

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"
SHORT = {"num_predict": 16, "temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def herd_url(redis_url: str) -> Iterator[str]:
    api_port, health_port = free_port(), free_port()
    env = {
        "HERD_REDIS_URL": redis_url,
        "HERD_HOST": f"127.0.0.1:{api_port}",
        "HERD_WORKER_HEALTH_ADDR": f"127.0.0.1:{health_port}",
        "HERD_WORKER_ID": "e2e-gemma",
        "HERD_NUM_CTX": "2048",
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", role],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for role in ("worker", "api")
    ]
    try:
        wait_for_http(f"http://127.0.0.1:{health_port}/readyz", timeout_s=180)
        wait_for_http(f"http://127.0.0.1:{api_port}/readyz", timeout_s=30)
        yield f"http://127.0.0.1:{api_port}"
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=30)


@pytest.fixture
def client(herd_url: str) -> Iterator[ollama.Client]:
    with ollama.Client(host=herd_url) as client:
        yield client


def _plausible_metrics(response: ollama.ChatResponse | ollama.GenerateResponse) -> None:
    assert response.done is True
    assert response.done_reason in ("stop", "length")
    assert response.eval_count is not None and 0 < response.eval_count <= 16
    assert response.prompt_eval_count is not None and response.prompt_eval_count > 5
    assert response.total_duration is not None and response.eval_duration is not None
    assert response.prompt_eval_duration is not None
    assert response.total_duration >= response.eval_duration + response.prompt_eval_duration
    # a 270M model on any machine: well under a second per token, above a microsecond
    per_token_ns = response.eval_duration / response.eval_count
    assert 1_000 < per_token_ns < 1_000_000_000


def test_chat_streams_text(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    parts = list(client.chat(model=MODEL, messages=messages, stream=True, options=SHORT))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    _plausible_metrics(parts[-1])
    assert parts[-1].eval_count is not None and len(parts) <= parts[-1].eval_count + 1
    # whatever the model wrote, streaming it changed nothing
    whole = client.chat(model=MODEL, messages=messages, options=SHORT)
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


def test_chat_not_streamed_is_deterministic_with_a_seed(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    first = client.chat(model=MODEL, messages=messages, options=SHORT)
    second = client.chat(model=MODEL, messages=messages, options=SHORT)
    assert first.message.role == "assistant" and first.message.content is not None
    assert first.message.content == second.message.content
    _plausible_metrics(first)


def test_generate_returns_text_and_context(client: ollama.Client) -> None:
    response = client.generate(model=MODEL, prompt="The sky is", options=SHORT)
    assert response.response is not None
    assert response.context is not None
    assert response.prompt_eval_count is not None and response.eval_count is not None
    assert len(response.context) == response.prompt_eval_count + response.eval_count
    _plausible_metrics(response)


def test_stop_option_ends_the_text(client: ollama.Client) -> None:
    prompt = "Count: 1, 2, 3,"
    free = client.generate(model=MODEL, prompt=prompt, options=SHORT).response or ""
    assert free, "no text to take a stop string from"
    # a stop string from the text the model actually wrote, whatever that text is
    middle = len(free) // 2
    stop = free[middle : middle + 2]
    stopped = client.generate(model=MODEL, prompt=prompt, options={**SHORT, "stop": [stop]})
    assert stopped.response == free[: free.index(stop)]
    assert stopped.done_reason == "stop"


def test_list_shows_the_model(client: ollama.Client) -> None:
    models = client.list().models
    gemma = next(m for m in models if m.model == MODEL)
    assert gemma.size is not None and gemma.size > 100_000_000
    assert gemma.details is not None and gemma.details.family == "gemma3"
    assert gemma.details.quantization_level == "Q4_K_M"


def test_unknown_model_raises_response_error_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope:1b", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
