"""`ollama pull` of the real gemma3:270m (its GGUF and Ollama's gemma3 template, from a
registry of our own) through `herd serve`, then a chat with it on llama.cpp: the pulled
model prompts exactly as the built-in one does."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import ollama
import pytest

from cli.ports import free_port
from tests.cli.test_main import _env, _stopped
from tests.cli.test_serve_pull import _up
from tests.registry import Registry, host_of, serving
from worker.model_files import default_model
from worker.prompts.builtin import GEMMA_GO_TEMPLATE

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "Name three colours."}]
OPTIONS = {"temperature": 0, "num_predict": 12}


@pytest.mark.timeout(300)
async def test_a_pulled_gemma_chats_like_the_built_in_one(tmp_path: Path) -> None:
    registry = Registry()
    weights = await asyncio.to_thread(default_model().path.read_bytes)
    registry.add_model("library/gemma3:270m", weights, template=GEMMA_GO_TEMPLATE)
    del weights
    port = free_port()
    env = _env(HERD_HOST=f"127.0.0.1:{port}", HERD_MODELS_DIR=str(tmp_path / "store"))
    env.pop("HERD_ENGINE")  # the real engine
    async with serving(registry):
        command = [sys.executable, "-m", "cli", "serve"]
        serve = await asyncio.to_thread(subprocess.Popen, command, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            await _up(base, serve)
            client = ollama.AsyncClient(host=base, timeout=240)
            pulled = f"{host_of(registry)}/library/gemma3:270m"
            last = await client.pull(pulled, insecure=True)
            assert last.status == "success"
            mine = await client.chat(model=pulled, messages=CHAT, options=OPTIONS)
            builtin = await client.chat(model="gemma3:270m", messages=CHAT, options=OPTIONS)
            await client.close()  # type: ignore[no-untyped-call]
        finally:
            serve.send_signal(signal.SIGINT)
            assert _stopped(serve) == 0
    assert mine.done and mine.eval_count and mine.message.content
    # Ollama's Go template for gemma3, run by the worker, gives the built-in turns: the
    # same prompt tokens, so the same greedy answer
    assert mine.prompt_eval_count == builtin.prompt_eval_count
    assert mine.message.content == builtin.message.content
