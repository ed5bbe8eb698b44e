"""/v1/models and /v1/models/{model} with the ``openai`` SDK, from live workers' adverts."""

from __future__ import annotations

from datetime import datetime

import httpx
import openai
import pytest

from tests.conftest import ApiFactory, WorkerFactory

MODELS = ["gemma3:270m", "team/tiny:1", "hf.co/org/embed-gguf:q4_k_m"]
#: The FakeEngine's modified_at for every model.
CREATED = int(datetime.fromisoformat("2026-01-01T00:00:00+00:00").timestamp())


@pytest.fixture
async def client(api: ApiFactory) -> httpx.AsyncClient:
    return await api()


async def test_no_models_is_an_empty_list_not_null(
    client: httpx.AsyncClient, sdk: openai.AsyncOpenAI
) -> None:
    assert (await client.get("/v1/models")).json() == {"object": "list", "data": []}
    assert [model async for model in sdk.models.list()] == []


async def test_list_names_owners_and_times(sdk: openai.AsyncOpenAI, worker: WorkerFactory) -> None:
    await worker(fake_models=MODELS)
    listed = {model.id: model async for model in sdk.models.list()}
    assert set(listed) == set(MODELS)
    assert {name: m.owned_by for name, m in listed.items()} == {
        "gemma3:270m": "library",
        "team/tiny:1": "team",
        "hf.co/org/embed-gguf:q4_k_m": "org",
    }
    assert all(m.object == "model" and m.created == CREATED for m in listed.values())


@pytest.mark.parametrize("name", ["gemma3:270m", "team/tiny:1", "hf.co/org/embed-gguf:q4_k_m"])
async def test_retrieve_works_for_names_with_slashes(
    sdk: openai.AsyncOpenAI, worker: WorkerFactory, name: str
) -> None:
    await worker(fake_models=MODELS)
    model = await sdk.models.retrieve(name)
    assert model.id == name and model.created == CREATED
    assert model.owned_by == (name.split("/")[-2] if "/" in name else "library")


async def test_retrieve_keeps_the_name_as_requested(
    client: httpx.AsyncClient, worker: WorkerFactory
) -> None:
    await worker(fake_models=["tiny:latest"])
    response = await client.get("/v1/models/Tiny")
    assert response.status_code == 200
    assert response.json() == {
        "id": "Tiny",
        "object": "model",
        "created": CREATED,
        "owned_by": "library",
    }


async def test_retrieve_unknown_model_is_an_openai_404(
    client: httpx.AsyncClient, sdk: openai.AsyncOpenAI, worker: WorkerFactory
) -> None:
    await worker()
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.models.retrieve("nope")
    assert caught.value.body == {
        "message": "model 'nope:latest' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    slashed = await client.get("/v1/models/some/where:1")
    assert slashed.status_code == 404
    assert slashed.json()["error"]["message"] == "model 'some/where:1' not found"
