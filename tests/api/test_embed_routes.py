"""/api/embed and the legacy /api/embeddings over real HTTP, with FakeEngine workers."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from tests.conftest import ApiFactory, WorkerFactory
from worker.fake_engine import FakeEngine

MODEL = "gemma3:270m"


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


@pytest.fixture
async def client(api: ApiFactory, worker: WorkerFactory) -> httpx.AsyncClient:
    client = await api()
    await worker()
    return client


async def test_embed_a_list_gives_normalised_vectors_in_order(client: httpx.AsyncClient) -> None:
    data = (await client.post("/api/embed", json={"model": MODEL, "input": ["a", "b", "a"]})).json()
    assert data["model"] == MODEL
    first, second, third = data["embeddings"]
    assert first == third and first != second
    assert all(abs(_norm(v) - 1) < 1e-6 for v in data["embeddings"])
    assert data["prompt_eval_count"] > 0
    assert data["total_duration"] >= data.get("load_duration", 0) > 0


async def test_embed_a_string_and_cut_dimensions(client: httpx.AsyncClient) -> None:
    full = (await client.post("/api/embed", json={"model": MODEL, "input": "hello"})).json()
    assert len(full["embeddings"]) == 1
    cut = (
        await client.post("/api/embed", json={"model": MODEL, "input": "hello", "dimensions": 3})
    ).json()
    (vector,) = cut["embeddings"]
    assert len(vector) == 3 and abs(_norm(vector) - 1) < 1e-6  # cut, then normalised again


async def test_embed_passes_options_and_keep_alive(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "input": "x", "options": {"num_ctx": 1024}, "keep_alive": "1m"}
    assert (await client.post("/api/embed", json=body)).status_code == 200
    body["options"] = {"num_ctx": "big"}
    response = await client.post("/api/embed", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": 'option "num_ctx" must be of type integer'}


async def test_empty_input_loads_the_model(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    engine = FakeEngine(["first:latest", "vectors:latest"], 0.001)
    await worker(engine=engine)
    empties: list[object] = ["", [], None]
    for empty in empties:
        body: dict[str, Any] = {"model": "vectors", "input": empty}
        response = await client.post("/api/embed", json=body)
        assert response.json() == {"model": "vectors", "embeddings": []}
    assert ("load", "vectors:latest") in engine.history
    legacy = await client.post("/api/embeddings", json={"model": "vectors"})
    assert legacy.json() == {"embedding": []}


async def test_legacy_embedding_is_not_normalised(client: httpx.AsyncClient) -> None:
    legacy = (await client.post("/api/embeddings", json={"model": MODEL, "prompt": "hello"})).json()
    assert set(legacy) == {"embedding"}
    assert abs(_norm(legacy["embedding"]) - 1) > 1e-3
    current = (await client.post("/api/embed", json={"model": MODEL, "input": "hello"})).json()
    scale = _norm(legacy["embedding"])
    assert current["embeddings"][0] == pytest.approx([x / scale for x in legacy["embedding"]])


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/embed", {"input": "x"}, 404, "model '' not found"),
        ("/api/embed", {"model": "nope", "input": "x"}, 404,
         'model "nope" not found, try pulling it first'),
        ("/api/embed", {"model": "bad name", "input": "x"}, 400, "invalid model name"),
        ("/api/embed", {"model": MODEL, "input": 3}, 400, "invalid input type"),
        ("/api/embed", {"model": MODEL, "input": ["a", 1]}, 400, "invalid input type"),
        ("/api/embed", {"model": MODEL, "input": {"text": "a"}}, 400, "invalid input type"),
        ("/api/embed", {"model": MODEL, "input": "x", "keep_alive": "9"}, 400,
         'time: missing unit in duration "9"'),
        ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
        ("/api/embeddings", {"model": "nope", "prompt": "x"}, 404,
         'model "nope" not found, try pulling it first'),
        ("/api/embeddings", {"model": MODEL, "prompt": "x", "options": {"seed": "1"}}, 400,
         'option "seed" must be of type integer'),
    ],
)  # fmt: skip
async def test_embed_errors(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, error: str
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == status
    assert response.json() == {"error": error}


async def test_any_model_can_embed(api: ApiFactory, worker: WorkerFactory) -> None:
    # no capability check, as in Ollama
    client = await api()
    await worker(fake_models=["plain:latest"], fake_capabilities=["completion"])
    response = await client.post("/api/embed", json={"model": "plain", "input": "x"})
    assert response.status_code == 200 and len(response.json()["embeddings"]) == 1
