"""/api/tags and /api/show of store models on a running cluster (API + worker), as
Ollama reports them: the manifest's digest, size and mtime, the config's details, and the
Modelfile's layers; and /api/tags following the store after a STORE_VERSION bump."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from shared.store import Store
from shared.store.notify import bump_store_version
from tests.conftest import ApiFactory, WorkerFactory, read_advert
from tests.polling import until
from tests.store_models import add_model
from tests.worker.test_llama_engine_tiny import write_tiny_llama

TEMPLATE = "{{ .System }}{{ .Prompt }}"


@pytest.fixture
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_llama(path)
    return path


async def tags(client: httpx.AsyncClient) -> dict[str, dict[str, object]]:
    response = await client.get("/api/tags")
    assert response.status_code == 200
    return {m["name"]: m for m in response.json()["models"]}


async def test_tags_and_show_of_store_models(
    api: ApiFactory, worker: WorkerFactory, redis: Redis, tmp_path: Path, gguf_file: Path
) -> None:
    store = Store(tmp_path)
    stored = add_model(
        store,
        "hf.co/Org/Chatty:Q8_0",
        gguf_file,
        template=TEMPLATE,
        system="Be brief.",
        params={"stop": ["<end>", "</s>"], "temperature": 0.7, "num_ctx": 4096},
        licenses=("MIT License", "Use policy\nline two"),
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        family="qwen2",
        parameter_size="494.03M",
        quantization="Q8_0",
    )
    await worker(models_dir=tmp_path, fake_models=["gemma3:270m"])
    client = await api()

    listed = await tags(client)
    entry = listed["hf.co/org/chatty:q8_0"]
    assert entry["model"] == "hf.co/org/chatty:q8_0"
    assert entry["digest"] == hashlib.sha256(stored.path.read_bytes()).hexdigest()
    assert entry["size"] == sum(layer.size for layer in stored.manifest.blobs())
    assert entry["modified_at"] == stored.modified_at.isoformat().replace("+00:00", "Z")
    details = dict(entry["details"])  # type: ignore[call-overload]
    assert {k: details[k] for k in list(details)[:6]} == {
        "parent_model": "",
        "format": "gguf",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": "494.03M",
        "quantization_level": "Q8_0",
    }

    response = await client.post("/api/show", json={"model": "HF.co/org/chatty:Q8_0"})
    assert response.status_code == 200
    shown = response.json()
    assert shown["template"] == TEMPLATE
    assert shown["system"] == "Be brief."
    assert shown["license"] == "MIT License\nUse policy\nline two"
    assert shown["parameters"] == (
        'stop                           "<end>"\n'
        'stop                           "</s>"\n'
        "temperature                    0.7\n"
        "num_ctx                        4096"
    )
    assert shown["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    assert shown["details"]["family"] == "qwen2"
    assert shown["modified_at"] == entry["modified_at"]
    assert shown["modelfile"].endswith(
        f"TEMPLATE {TEMPLATE}\n"
        "SYSTEM Be brief.\n"
        "PARAMETER stop <end>\n"
        "PARAMETER stop </s>\n"
        "PARAMETER temperature 0.7\n"
        "PARAMETER num_ctx 4096\n"
        "LICENSE MIT License\n"
        'LICENSE "Use policy\nline two"\n'
        "MESSAGE user hi\n"
        "MESSAGE assistant hello\n"
    )
    # Ollama's key order: messages after details, before model_info
    keys = list(shown)
    assert keys.index("details") < keys.index("messages") < keys.index("model_info")

    # a request's system replaces the model's in what show reports
    response = await client.post(
        "/api/show", json={"model": "hf.co/org/chatty:q8_0", "system": "X"}
    )
    assert response.json()["system"] == "X"


async def test_tags_follow_the_store(
    api: ApiFactory, worker: WorkerFactory, redis: Redis, tmp_path: Path, gguf_file: Path
) -> None:
    store = Store(tmp_path)
    add_model(store, "kept", gguf_file)
    add_model(store, "dropped", gguf_file)
    running = await worker(models_dir=tmp_path, fake_models=["gemma3:270m"])
    client = await api()
    assert {"kept:latest", "dropped:latest"} <= set(await tags(client))

    store.delete("dropped")
    add_model(store, "new", gguf_file)
    await bump_store_version(redis)

    async def current() -> bool:
        return "new:latest" in await tags(client)

    await until(current, timeout_s=5, message="/api/tags did not follow the store")
    assert "kept:latest" in await tags(client)
    # the worker no longer serves the removed model (the API's catalog of models seen
    # still lists it: forgetting it there is the delete route's, see api.registry)
    advert = await read_advert(redis, running.id)
    assert {m.name for m in advert.models} == {"gemma3:270m", "kept:latest", "new:latest"}
    response = await client.post(
        "/api/chat", json={"model": "new", "messages": [], "stream": False}
    )
    assert response.status_code == 200  # an empty chat loads it: servable
