"""Serving a store's models: a Modelfile's TEMPLATE, SYSTEM, MESSAGEs and PARAMETERs in
the prompt the real llama engine builds (a tiny GGUF), the engine learning and
forgetting models, and a running worker following the store after a STORE_VERSION bump."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.errors import ModelNotFound
from shared.messages import ChatMessage, ReplicaPolicy, SamplingOptions
from shared.settings import Settings
from shared.store import Store
from shared.store.notify import bump_store_version
from tests.conftest import WorkerFactory, make_job, run_job
from tests.polling import until
from tests.store_models import add_model
from tests.worker.test_llama_engine_tiny import job, prompt_of, run, write_tiny_llama
from worker.fake_engine import REPLY, FakeEngine
from worker.llama.engine import LlamaEngine
from worker.model_files import ModelSpec, discover
from worker.prompts.template import job_messages

TEMPLATE = (
    "{{ if .System }}[S]{{ .System }}{{ end }}"
    '{{ range .Messages }}{{ if ne .Role "system" }}[{{ .Role }}]{{ .Content }}{{ end }}{{ end }}'
    "[A]"
)


@pytest.fixture
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_llama(path)
    return path


def chatty(store: Store, gguf_file: Path, name: str = "chatty") -> None:
    add_model(
        store,
        name,
        gguf_file,
        template=TEMPLATE,
        system="be brief",
        params={"temperature": 0, "num_predict": 3, "num_ctx": 128},
        messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "e"}],
    )


def specs_of(root: Path) -> Settings:
    return Settings(models_dir=root, serve_default_model=False)


async def test_a_chat_uses_the_modelfile_template_system_messages_and_parameters(
    tmp_path: Path, gguf_file: Path
) -> None:
    chatty(Store(tmp_path), gguf_file)
    engine = LlamaEngine(discover(specs_of(tmp_path)), n_ctx=256, n_gpu_layers=0)
    await engine.start()
    try:
        hi = [ChatMessage(role="user", content="hi")]
        plain = job(model="chatty:latest", kind="chat", messages=hi, options=SamplingOptions())
        _, finish = await run(engine, plain)
        # the Go template, not the GGUF's Jinja one; SYSTEM first, then the MESSAGEs
        assert prompt_of(finish) == "[S]be brief[user]a[assistant]e[user]hi[A]"
        # PARAMETER num_predict 3 is the default a request did not override
        assert (finish.done_reason, finish.n_decoded) == ("length", 3)
        # and PARAMETER num_ctx 128 the load's (the worker's own default is 256)
        assert [m.context_length for m in engine.loaded()] == [128]
        assert engine.effective_options("chatty:latest", plain.load).num_ctx == 128

        own = [ChatMessage(role="system", content="be long"), *hi]
        _, finish = await run(engine, job(model="chatty:latest", kind="chat", messages=own))
        # a request's own system message replaces the model's (Ollama's chat handler)
        assert prompt_of(finish) == "[S]be long[user]a[assistant]e[user]hi[A]"

        generate = job(model="chatty:latest", prompt="hi", options=SamplingOptions())
        _, finish = await run(engine, generate)
        assert prompt_of(finish) == "[S]be brief[user]a[assistant]e[user]hi[A]"
        _, finish = await run(engine, generate.model_copy(update={"system": "terse"}))
        assert prompt_of(finish).startswith("[S]terse[user]a")
    finally:
        await engine.close()


async def test_the_engine_learns_and_forgets_models(tmp_path: Path, gguf_file: Path) -> None:
    store = Store(tmp_path)
    add_model(store, "first", gguf_file)
    engine = LlamaEngine(discover(specs_of(tmp_path)), n_ctx=256, n_gpu_layers=0)
    await engine.start()
    try:
        chatty(store, gguf_file, "second")
        engine.set_models(discover(specs_of(tmp_path)))
        assert [m.name for m in engine.models()] == ["second:latest", "first:latest"]
        second = job(model="second:latest", kind="chat", messages=[ChatMessage(role="user")])
        _, finish = await run(engine, second)
        assert prompt_of(finish).startswith("[S]be brief")

        store.delete("first")
        engine.set_models(discover(specs_of(tmp_path)))
        # gone from the list at once; its loaded instance answers until it is unloaded
        assert [m.name for m in engine.models()] == ["second:latest"]
        assert {m.name for m in engine.loaded()} == {"first:latest", "second:latest"}
        await engine.unload("first:latest")
        with pytest.raises(ModelNotFound):
            await engine.load("first:latest", second.load)
    finally:
        await engine.close()


async def test_a_worker_follows_the_store(
    worker: WorkerFactory, redis: Redis, tmp_path: Path, gguf_file: Path
) -> None:
    store = Store(tmp_path)
    add_model(store, "first", gguf_file)
    running = await worker(models_dir=tmp_path, fake_models=["gemma3:270m"])
    assert set(running.streams) == {keys.job_stream("gemma3:270m"), keys.job_stream("first:latest")}

    events = await run_job(redis, make_job("first:latest"))
    assert "first:latest" in running.residency.resident()

    add_model(store, "added", gguf_file)
    await asyncio.sleep(0.5)  # two heartbeats: no bump, no rescan
    assert keys.job_stream("added:latest") not in running.streams
    await bump_store_version(redis)

    # its stream is read, its group made, and a job of it runs (placement loads it)
    await until(lambda: keys.job_stream("added:latest") in running.streams, timeout_s=5)
    events = await run_job(redis, make_job("added:latest"))
    assert "".join(getattr(e, "text", "") for e in events) == REPLY

    store.delete("first")
    await bump_store_version(redis)
    await until(lambda: keys.job_stream("first:latest") not in running.streams, timeout_s=5)
    assert "first:latest" not in {m.name for m in running.engine.models()}
    # it was loaded and idle: unloaded
    await until(lambda: "first:latest" not in running.residency.resident(), timeout_s=5)


async def test_a_changed_model_is_loaded_again_even_when_kept(
    worker: WorkerFactory, redis: Redis, tmp_path: Path, gguf_file: Path
) -> None:
    """A re-pull or re-create changes a model's file: its next job loads the new one,
    though a replica policy keeps the model loaded (it never expires)."""
    store = Store(tmp_path)
    add_model(store, "kept", gguf_file)
    policy = ReplicaPolicy(min_replicas=1).model_dump_json()
    await redis.hset(keys.POLICIES, "kept:latest", policy)  # type: ignore[misc]
    running = await worker(models_dir=tmp_path, fake_models=["gemma3:270m"])
    engine = cast(FakeEngine, running.engine)
    await run_job(redis, make_job("kept:latest"))
    loads = engine.history.count(("load", "kept:latest"))
    assert loads >= 1

    add_model(store, "kept", gguf_file, system="now with a system prompt")  # a new digest
    await bump_store_version(redis)
    await asyncio.sleep(0.6)  # three heartbeats: the worker rescanned
    events = await run_job(redis, make_job("kept:latest"))
    assert "".join(getattr(e, "text", "") for e in events) == REPLY
    assert engine.history.count(("load", "kept:latest")) == loads + 1
    assert engine.history.count(("unload", "kept:latest")) == 1  # swapped, by that job


async def test_a_worker_without_a_store_keeps_its_models_when_others_write_one(
    worker: WorkerFactory, redis: Redis, gguf_file: Path
) -> None:
    """Another process's store write bumps the version for all; a worker with no store (its
    engine given its models) has nothing to rescan and must not lose them."""
    engine = LlamaEngine([ModelSpec(name="given:1", path=gguf_file)], n_ctx=256, n_gpu_layers=0)
    running = await worker(engine=cast(FakeEngine, engine))
    await bump_store_version(redis)
    await asyncio.sleep(0.6)  # three heartbeats
    assert [m.name for m in running.engine.models()] == ["given:1"]
    assert keys.job_stream("given:1") in running.streams


def test_modelfile_messages_as_ollama_adds_them() -> None:
    preamble = (ChatMessage(role="user", content="a"), ChatMessage(role="assistant", content="e"))
    hi = ChatMessage(role="user", content="hi")

    def texts(**fields: object) -> list[str]:
        request = job(**fields)
        chosen = job_messages(request, system="model", preamble=preamble)
        return [f"{m.role}:{m.content}" for m in chosen]

    assert texts(kind="chat", messages=[hi]) == ["system:model", "user:a", "assistant:e", "user:hi"]
    # a system message anywhere but first does not replace the model's
    late = [hi, ChatMessage(role="system", content="late")]
    assert texts(kind="chat", messages=late)[:2] == ["system:model", "user:a"]
    # /api/generate: the request's system wins; a context means the preamble was said already
    assert texts(prompt="hi", system="mine") == ["system:mine", "user:a", "assistant:e", "user:hi"]
    assert texts(prompt="hi", context=[1, 2]) == ["system:model", "user:hi"]
