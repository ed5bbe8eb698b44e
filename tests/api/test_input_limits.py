"""Inputs that must not hurt an API pod, a worker or the cluster, refused by the API with a
400 before anything is queued: JSON nested too deep, a key given twice, ``context`` ids that
are no tokens; and base64 images checked fast, off the event loop when large."""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import httpx
import orjson
import pytest

from api import bodies, fields, offload, requests
from api.bodies import ChatRequest, DeleteRequest, GenerateRequest
from shared.errors import InvalidRequest
from tests.api.conftest import advert
from tests.conftest import ApiFactory, WorkerFactory


def _nested(levels: int) -> Any:
    value: Any = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def _nested_json(levels: int) -> bytes:
    """``levels`` objects one in another, as JSON text (orjson writes 255 levels at most)."""
    return b'{"a": ' * (levels - 1) + b"{}" + b"}" * (levels - 1)


def _body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "m", "prompt": "hi", **fields})


def _with(raw: bytes, key: str, value: bytes) -> bytes:
    """``raw`` (a JSON object) with ``"key": value`` added first, ``value`` as JSON text."""
    rest = raw[1:] if raw.strip() == b"{}" else b", " + raw[1:]
    return b'{"' + key.encode() + b'": ' + value + rest


def test_a_body_nested_to_the_limit_is_read() -> None:
    # the body is level 1, so its format may nest MAX_DEPTH - 1 levels
    body = bodies.parse(_body(format=_nested(bodies.MAX_DEPTH - 1)), GenerateRequest)
    assert body.format is not None


@pytest.mark.parametrize("levels", [bodies.MAX_DEPTH, 300, 1000])
def test_format_nested_deeper_is_a_400_not_a_500(levels: int) -> None:
    # orjson encodes 255 levels at most: a deeper format failed later, as a 500
    with pytest.raises(InvalidRequest, match=r"^exceeded max depth"):
        bodies.parse(_with(_body(), "format", _nested_json(levels)), GenerateRequest)


def test_tools_nested_deeper_is_a_400() -> None:
    raw = orjson.dumps({"model": "m", "tools": [{"type": "function"} | _nested(80)]})
    with pytest.raises(InvalidRequest, match=r"^exceeded max depth"):
        bodies.parse(raw, ChatRequest)


def test_nesting_beyond_what_orjson_reads_is_a_400_too() -> None:
    raw = b'{"model": "m", "format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidRequest):
        bodies.parse(raw, GenerateRequest)


def test_depth_walk_needs_no_recursion() -> None:
    # a value built in Python (not from JSON) deeper than the interpreter's stack
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidRequest):
        bodies.check_depth({"format": deep})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "a", "model": "b"}',
        b'{"model": "a", "mod\\u0065l": "b"}',  # the same key once decoded
        b'{"model": "a", "options": {"num_ctx": 1, "num_ctx": 2}}',
    ],
)
def test_a_key_given_twice_is_a_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequest, match=r'^json: duplicate key "'):
        bodies.parse(raw, DeleteRequest)


def test_the_same_key_in_different_objects_is_fine() -> None:
    raw = b'{"model": "a", "messages": [{"role": "user"}, {"role": "assistant"}]}'
    assert bodies.parse(raw, ChatRequest).model == "a"


@pytest.mark.parametrize("context", [[-1], [0, 1, -5]])
def test_a_negative_context_id_is_a_400(context: list[int]) -> None:
    with pytest.raises(InvalidRequest, match=r"^invalid context: token id -"):
        requests.check_context(context, advert("m:latest"))


def test_context_ids_are_checked_against_an_advertised_vocabulary() -> None:
    model = advert(
        "m:latest", model_info={"general.architecture": "llama", "llama.vocab_size": 100}
    )
    assert requests.vocab_size(model) == 100
    requests.check_context([0, 99], model)
    with pytest.raises(InvalidRequest, match="token id 100 is not in the model's vocabulary"):
        requests.check_context([0, 100], model)


def test_without_a_vocabulary_size_the_worker_checks_the_upper_bound() -> None:
    model = advert("m:latest", model_info={"tokenizer.ggml.tokens": []})  # shortened
    assert requests.vocab_size(model) is None
    requests.check_context([2**31 - 1], model)


def test_a_4_mib_image_is_checked_in_milliseconds() -> None:
    image = base64.b64encode(bytes(3 * 2**20)).decode()
    started = time.perf_counter()
    assert fields.check_images([image]) == [image]
    bad = image[:-9] + "!" + image[-8:]
    with pytest.raises(InvalidRequest, match=f"input byte {len(image) - 9}$"):
        fields.check_images([bad])
    # Go's loop in Python took 0.3 to 0.85 s for each of these
    assert time.perf_counter() - started < 0.25


async def test_large_bodies_are_checked_off_the_event_loop() -> None:
    here = threading.get_ident()
    assert await offload.off_loop(offload.OFF_LOOP_BYTES - 1, threading.get_ident) == here
    assert await offload.off_loop(offload.OFF_LOOP_BYTES, threading.get_ident) != here


# -- over HTTP, with a FakeEngine worker ------------------------------------------------


@pytest.fixture
async def client(api: ApiFactory, worker: WorkerFactory) -> httpx.AsyncClient:
    client = await api()
    await worker()
    return client


async def test_a_duplicate_key_cannot_hide_a_served_model(client: httpx.AsyncClient) -> None:
    raw = b'{"model": "nope", "model": "gemma3:270m"}'
    response = await client.request("DELETE", "/api/delete", content=raw)
    assert response.status_code == 400
    assert response.json() == {"error": 'json: duplicate key "model"'}
    tags = (await client.get("/api/tags")).json()["models"]
    assert "gemma3:270m" in [m["name"] for m in tags]  # not hidden by the other key


_DEEP = _nested_json(300)


def _prompt(**fields: Any) -> bytes:
    return orjson.dumps({"prompt": "hi", **fields})


_USER = b'[{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("path", "raw", "message"),
    [
        ("/api/generate", _prompt(format=_nested(100)), "exceeded max depth"),
        ("/api/chat", _with(_with(b"{}", "messages", _USER), "format", _DEEP), "exceeded max"),
        ("/api/chat", _with(_with(b"{}", "messages", _USER), "tools", b"[" + _DEEP + b"]"), "exc"),
        ("/api/generate", _prompt(context=[1, -1]), "invalid context: token id -1"),
        ("/api/generate", _prompt(format=False), 'invalid format: "false"'),
        ("/v1/chat/completions", _with(b"{}", "messages", b"[" + _DEEP + b"]"), "exceeded max"),
    ],
)
async def test_refused_with_a_400_before_anything_is_queued(
    client: httpx.AsyncClient, path: str, raw: bytes, message: str
) -> None:
    response = await client.post(path, content=_with(raw, "model", b'"gemma3:270m"'))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    text = error if isinstance(error, str) else error["message"]
    assert text.startswith(message)


async def test_a_large_image_request_is_answered(client: httpx.AsyncClient) -> None:
    image = base64.b64encode(bytes(3 * 2**20)).decode()  # 4 MiB of base64: off the loop
    body = {"model": "gemma3:270m", "prompt": "hi", "images": [image[:-2] + "!!"]}
    response = await client.post("/api/generate", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": f"illegal base64 data at input byte {len(image) - 2}"}
