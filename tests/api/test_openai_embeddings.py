"""/v1/embeddings with the ``openai`` SDK (which asks for base64 and decodes it itself) and
with httpx for the exact shapes."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ApiFactory, WorkerFactory

MODEL = "gemma3:270m"


@pytest.fixture
async def client(api: ApiFactory, worker: WorkerFactory) -> httpx.AsyncClient:
    await worker()
    return await api()


async def embed(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/embeddings", json={"model": MODEL, **body})


async def test_float_embeddings_shape(client: httpx.AsyncClient) -> None:
    response = await embed(client, input=["one", "two words"], encoding_format="float")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    for item in body["data"]:
        assert math.isclose(math.hypot(*item["embedding"]), 1.0, rel_tol=1e-5)
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


async def test_base64_is_the_float_vector_as_little_endian_float32(
    client: httpx.AsyncClient,
) -> None:
    floats = (await embed(client, input="same text")).json()["data"][0]["embedding"]
    encoded = (await embed(client, input="same text", encoding_format="BASE64")).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats, rel=1e-6)


async def test_sdk_string_and_list_input(
    sdk: openai.AsyncOpenAI, client: httpx.AsyncClient
) -> None:
    single = await sdk.embeddings.create(model=MODEL, input="hello")
    expected = (await embed(client, input="hello")).json()["data"][0]["embedding"]
    assert single.data[0].embedding == pytest.approx(expected, rel=1e-6)
    many = await sdk.embeddings.create(model=MODEL, input=["a", "b", "c"])
    assert [d.index for d in many.data] == [0, 1, 2]
    assert many.usage.prompt_tokens == 3


async def test_dimensions_cut_and_renormalise(client: httpx.AsyncClient) -> None:
    body = (await embed(client, input="hello", dimensions=4)).json()
    vector = body["data"][0]["embedding"]
    assert len(vector) == 4 and math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"input": []}, 400, "invalid input"),
        ({"input": None}, 400, "invalid input"),
        ({}, 400, "invalid input"),
        (
            {"input": "x", "encoding_format": "int8"},
            400,
            "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64'].",
        ),
        ({"input": "x", "model": "nope"}, 404, 'model "nope" not found, try pulling it first'),
    ],
)
async def test_errors(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, message: str
) -> None:
    response = await client.post("/v1/embeddings", json={"model": MODEL, **body})
    assert response.status_code == status
    assert response.json()["error"]["message"] == message


async def test_sdk_raises_bad_request(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="invalid input"):
        await sdk.embeddings.create(model=MODEL, input=[])
