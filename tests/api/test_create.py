"""POST /api/create over real HTTP, against a store in a temporary folder: a model from an
uploaded GGUF with every kind of layer, a model from a model of the store, Ollama's
progress lines, the refusals, and the ``ollama`` Python client's ``create_blob`` and
``create`` against Herd."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import ollama
import orjson
import pytest
from redis.asyncio import Redis

from api.gguf_details import read_details
from shared import keys
from shared.store import Config, MediaType, Store
from tests.api.conftest import advert, advertise
from tests.conftest import ApiFactory


def tiny_gguf(path: Path, *, arch: str = "llama", parameter_count: int | None = None) -> Path:
    """A GGUF of a few KB: a header with a vocabulary, two small tensors (Q8_0's file type)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("Tiny")
    writer.add_context_length(128)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    if parameter_count is not None:
        writer.add_uint64("general.parameter_count", parameter_count)
    writer.add_token_list(["<s>", "</s>", *(f"t{i}" for i in range(300))])
    writer.add_array("tokenizer.ggml.scores", [0.0] * 302)
    writer.add_tensor("token_embd.weight", np.zeros((302, 16), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


async def upload(client: httpx.AsyncClient, data: bytes) -> str:
    digest = sha(data)
    assert (await client.post(f"/api/blobs/{digest}", content=data)).status_code == 201
    return digest


async def statuses(client: httpx.AsyncClient, body: dict[str, Any]) -> list[str]:
    response = await client.post("/api/create", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    assert all(set(line) == {"status"} for line in lines), lines
    return [line["status"] for line in lines]


def test_the_header_details_match_the_gguf_package(tmp_path: Path) -> None:
    details = read_details(tiny_gguf(tmp_path / "a.gguf"))
    assert (details.family, details.file_type, details.parameter_count) == (
        "llama",
        "Q8_0",
        302 * 16 + 16,
    )
    recorded = read_details(tiny_gguf(tmp_path / "b.gguf", arch="gemma3", parameter_count=7))
    assert (recorded.family, recorded.parameter_count) == ("gemma3", 7)


async def test_create_from_a_gguf_with_every_layer(
    api: ApiFactory, redis: Redis, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    client = await api(models_dir=store_dir)
    model = tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    digest = await upload(client, model)
    version = int(await redis.get(keys.STORE_VERSION) or 0)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    body = {
        "model": "Mine",
        "files": {"tiny.gguf": digest},
        "template": "{{ .Prompt }}",
        "system": "You are terse.",
        "parameters": {"temperature": 0.5, "stop": ["<end>", "x"], "num_ctx": 4096.0},
        "messages": messages,
        "license": ["MIT", "Apache-2.0"],
    }
    template, system = b"{{ .Prompt }}", b"You are terse."
    # Go's json.Encoder: sorted keys, HTML escaped, whole floats as integers, a newline
    params = b'{"num_ctx":4096,"stop":["\\u003cend\\u003e","x"],"temperature":0.5}\n'
    messages_blob = orjson.dumps(messages) + b"\n"
    new = [template, system, b"MIT", b"Apache-2.0", params, messages_blob]
    assert await statuses(client, body) == [
        "parsing GGUF",
        f"using existing layer {digest}",
        *(f"creating new layer {sha(data)}" for data in new),
        "writing manifest",
        "success",
    ]
    stored = Store(store_dir).get("mine")
    assert stored is not None and stored.name == "mine:latest"
    kinds = [MediaType.MODEL, MediaType.TEMPLATE, MediaType.SYSTEM]
    kinds += [MediaType.LICENSE, MediaType.LICENSE, MediaType.PARAMS, MediaType.MESSAGES]
    assert [(layer.media_type, layer.digest) for layer in stored.manifest.layers] == list(
        zip(kinds, [digest, *(sha(data) for data in new)], strict=True)
    )
    assert [layer.size for layer in stored.manifest.layers] == [
        len(model),
        *(len(data) for data in new),
    ]
    config = Config.model_validate(Store(store_dir).read_json(stored.manifest.config.digest))
    assert (config.model_format, config.model_family, config.model_families) == (
        "gguf",
        "llama",
        ["llama"],
    )
    assert (config.file_type, config.model_type) == (
        "Q8_0",
        "5K",
    )  # 4848 weights, Ollama's HumanNumber
    assert config.rootfs["diff_ids"] == [layer.digest for layer in stored.manifest.layers]
    assert int(await redis.get(keys.STORE_VERSION) or 0) == version + 1


async def test_create_from_a_store_model_shares_its_blobs(api: ApiFactory, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    client = await api(models_dir=store_dir)
    digest = await upload(client, tiny_gguf(tmp_path / "tiny.gguf").read_bytes())
    first = {"model": "base", "files": {"tiny.gguf": digest}, "system": "one", "stream": False}
    first |= {"template": "T", "parameters": {"top_k": 5}}
    created = await client.post("/api/create", json=first)
    assert (created.status_code, created.json()) == (200, {"status": "success"})
    base = Store(store_dir).get("base")
    assert base is not None
    template = base.manifest.layer(MediaType.TEMPLATE)
    params = base.manifest.layer(MediaType.PARAMS)
    assert template is not None and params is not None

    lines = await statuses(
        client, {"model": "derived", "from": "base", "system": "two", "parameters": {"seed": 1}}
    )
    merged = b'{"seed":1,"top_k":5}\n'  # the base's parameters, plus the new one
    assert lines == [
        f"using existing layer {digest}",
        f"using existing layer {template.digest}",
        f"creating new layer {sha(b'two')}",
        f"creating new layer {sha(merged)}",
        "writing manifest",
        "success",
    ]
    derived = Store(store_dir).get("derived")
    assert derived is not None
    assert derived.manifest.layer(MediaType.MODEL) == base.manifest.layer(MediaType.MODEL)
    system = derived.manifest.layer(MediaType.SYSTEM)
    assert system is not None and Store(store_dir).read_text(system.digest) == "two"
    # one copy of the weights on disk
    assert len(list((store_dir / "blobs").glob(f"{digest.replace(':', '-')}*"))) == 1


async def test_a_create_over_a_name_drops_its_old_layers(api: ApiFactory, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    client = await api(models_dir=store_dir)
    digest = await upload(client, tiny_gguf(tmp_path / "tiny.gguf").read_bytes())
    for system in ("old prompt", "new prompt"):
        body = {"model": "m", "files": {"t.gguf": digest}, "system": system, "stream": False}
        assert (await client.post("/api/create", json=body)).status_code == 200
    store = Store(store_dir)
    assert not store.has_blob(sha(b"old prompt"))
    assert store.has_blob(sha(b"new prompt")) and store.has_blob(digest)


async def test_create_clears_an_older_deletion_of_its_name(
    api: ApiFactory, redis: Redis, tmp_path: Path
) -> None:
    client = await api(models_dir=tmp_path / "store")
    await advertise(redis, [advert("m:latest")])
    assert (await client.request("DELETE", "/api/delete", json={"model": "m"})).status_code == 200
    assert await redis.sismember(keys.CATALOG_DELETED, "m:latest")  # type: ignore[misc]
    digest = await upload(client, tiny_gguf(tmp_path / "tiny.gguf").read_bytes())
    body = {"model": "m", "files": {"t.gguf": digest}, "stream": False}
    assert (await client.post("/api/create", json=body)).status_code == 200
    assert not await redis.sismember(keys.CATALOG_DELETED, "m:latest")  # type: ignore[misc]


ZERO = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"model": "m"}, 400, "neither 'from' or 'files' was specified"),
        ({"model": "m", "from": "x", "quantize": "q4_K_M"}, 400, "quantization is not supported"),
        ({"model": "m", "from": "x", "quantization": "Q8_0"}, 400, "quantization is not supported"),
        ({"model": "m", "from": "x", "adapters": {"a.gguf": ZERO}}, 400,
         "adapters are not supported"),
        ({"model": "bad name", "from": "x"}, 400, "invalid model name"),
        ({"from": "x"}, 400, "invalid model name"),
        ({"model": "m", "from": "a/b/c/d"}, 400, "invalid model name"),
        ({"model": "m", "from": "nope"}, 404, 'model "nope" not found'),
        ({"model": "m", "from": "served"}, 400, 'model "served" is not in the model store'),
        ({"model": "m", "files": {}}, 400, "no files provided to convert"),
        ({"model": "m", "files": {"../t.gguf": ZERO}}, 400, "file path must be relative"),
        ({"model": "m", "files": {"/t.gguf": ZERO}}, 400, "file path must be relative"),
        ({"model": "m", "files": {"t.gguf": "sha256:abc"}}, 400, "invalid digest format"),
        ({"model": "m", "files": {"t.gguf": ZERO}}, 400, f"blob {ZERO} (\"t.gguf\") not found"),
        ({"model": "m", "files": {"a": ZERO, "b": ZERO}}, 400, "only one GGUF file"),
        ({"model": "m", "files": {"t.txt": "TEXT"}}, 400, "supplied file was not in GGUF format"),
        ({"model": "m", "files": {"t.gguf": "GGUF"}, "parameters": {"nope": 1}}, 400,
         "unknown parameter 'nope'"),
        ({"model": "m", "files": {"t.gguf": "GGUF"}, "parameters": {"temperature": "hot"}}, 400,
         'option "temperature" must be of type float32'),
        ({"model": "m", "files": {"t.gguf": "GGUF"}, "license": 3}, 400,
         "json: cannot unmarshal number into Go struct field CreateRequest.license"),
    ],
)  # fmt: skip
async def test_refusals_come_before_any_progress(
    api: ApiFactory,
    redis: Redis,
    tmp_path: Path,
    body: dict[str, Any],
    status: int,
    error: str,
) -> None:
    client = await api(models_dir=tmp_path / "store")
    await advertise(redis, [advert("served:latest")])
    blobs = {"TEXT": await upload(client, b"just text")}
    blobs["GGUF"] = await upload(client, tiny_gguf(tmp_path / "t.gguf").read_bytes())
    if body.get("files"):
        body = {**body, "files": {k: blobs.get(v, v) for k, v in body["files"].items()}}
    response = await client.post("/api/create", json=body)
    assert response.status_code == status
    assert response.json()["error"].startswith(error), response.json()
    assert Store(tmp_path / "store").get("m") is None


async def test_without_a_store_create_says_so(api: ApiFactory) -> None:
    client = await api()
    response = await client.post("/api/create", json={"model": "m", "from": "x"})
    assert response.status_code == 501
    assert response.json() == {"error": "this server has no model store (set HERD_MODELS_DIR)"}


async def test_the_ollama_client_creates_a_model(api: ApiFactory, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    client = await api(models_dir=store_dir)
    path = tiny_gguf(tmp_path / "tiny.gguf")
    async with ollama.AsyncClient(host=str(client.base_url)) as sdk:
        digest = await sdk.create_blob(path)
        assert digest == sha(path.read_bytes())
        done = await sdk.create(model="tiny", files={"tiny.gguf": digest}, system="Be brief.")
        assert done.status == "success"
        progress = await sdk.create(model="tiny2", from_="tiny", stream=True)
        streamed = [p.status async for p in progress]
        assert streamed[-2:] == ["writing manifest", "success"]
        with pytest.raises(ollama.ResponseError, match="quantization is not supported"):
            await sdk.create(model="q", from_="tiny", quantize="q4_K_M")
    store = Store(store_dir)
    tiny, tiny2 = store.get("tiny"), store.get("tiny2")
    assert tiny is not None and tiny2 is not None
    assert tiny.manifest.layers == tiny2.manifest.layers
    system = tiny.manifest.layer(MediaType.SYSTEM)
    assert system is not None and store.read_text(system.digest) == "Be brief."
