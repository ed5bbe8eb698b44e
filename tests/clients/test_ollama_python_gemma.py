"""The official ``ollama`` Python client against gemma3:270m served by Herd: real tokens,
constrained output, embeddings, and the model's refusals (``e2e``)."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import pytest

from tests.clients.cluster import GEMMA, GEMMA_NUM_CTX
from tests.clients.samples import SHORT, WEATHER_TOOL, City, norm


@pytest.fixture
def gemma(gemma_url: str) -> Iterator[ollama.Client]:
    with ollama.Client(host=gemma_url) as client:
        yield client


@pytest.mark.e2e
def test_gemma_generate_and_chat_real_tokens(gemma: ollama.Client) -> None:
    generated = gemma.generate(model=GEMMA, prompt="The sky is", options=SHORT)
    assert (generated.response or "").strip() and generated.context
    assert generated.eval_count is not None and 0 < generated.eval_count <= 12
    scored = gemma.generate(
        model=GEMMA, prompt="The sky is", options=SHORT, logprobs=True, top_logprobs=3
    )
    assert scored.response == generated.response  # seeded, temperature 0
    assert scored.logprobs and len(scored.logprobs) == scored.eval_count
    assert "".join(e.token for e in scored.logprobs) == scored.response
    for entry in scored.logprobs:
        assert entry.top_logprobs is not None and len(entry.top_logprobs) == 3
        # greedy decoding picks the most likely token
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs))
    parts = list(
        gemma.chat(
            model=GEMMA,
            messages=[{"role": "user", "content": "Name a colour."}],
            options=SHORT,
            stream=True,
        )
    )
    assert "".join(p.message.content or "" for p in parts).strip()
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")


@pytest.mark.e2e
def test_gemma_format_schema_output_validates(gemma: ollama.Client) -> None:
    response = gemma.chat(
        model=GEMMA,
        messages=[{"role": "user", "content": "Give me a city and its population as JSON."}],
        format=City.model_json_schema(),
        options={"num_predict": 64, "temperature": 0, "seed": 7},
    )
    assert response.done_reason == "stop", response.message.content
    City.model_validate_json(response.message.content or "")


@pytest.mark.e2e
def test_gemma_embed_real_vectors(gemma: ollama.Client) -> None:
    response = gemma.embed(model=GEMMA, input=["cat", "stock market", "cat"])
    cat, market, cat_again = response.embeddings
    assert len(cat) == 640  # gemma3:270m's embedding length
    assert all(abs(norm(v) - 1) < 1e-3 for v in response.embeddings)
    assert cat == pytest.approx(cat_again, abs=1e-5) and cat != market
    assert response.prompt_eval_count is not None and response.prompt_eval_count >= 3


@pytest.mark.e2e
def test_gemma_refuses_tools_and_thinking(gemma: ollama.Client) -> None:
    message = [{"role": "user", "content": "x"}]
    with pytest.raises(ollama.ResponseError) as info:
        gemma.chat(model=GEMMA, messages=message, tools=[WEATHER_TOOL])
    assert info.value.status_code == 400
    assert info.value.error == f"registry.ollama.ai/library/{GEMMA} does not support tools"
    with pytest.raises(ollama.ResponseError) as info:
        gemma.chat(model=GEMMA, messages=message, think=True)
    assert info.value.status_code == 400
    assert info.value.error == f'"{GEMMA}" does not support thinking'


@pytest.mark.e2e
def test_gemma_refuses_inputs_longer_than_the_context(gemma: ollama.Client) -> None:
    long = "word " * (GEMMA_NUM_CTX + 100)
    with pytest.raises(ollama.ResponseError) as info:
        gemma.embed(model=GEMMA, input=long, truncate=False)
    assert info.value.status_code == 400
    assert info.value.error == "the input length exceeds the context length"
    truncated = gemma.embed(model=GEMMA, input=long)  # truncate defaults to true
    assert len(truncated.embeddings[0]) == 640
    # ollama-python has no `shift`; its own HTTP client sends it
    refused = gemma._client.post(
        "/api/generate", json={"model": GEMMA, "prompt": long, "shift": False, "stream": False}
    )
    assert refused.status_code == 400, refused.text[:300]
    assert refused.json()["error"].startswith("the prompt is longer than the context length")
