"""What an Ollama user types first, against `herd serve`: `ollama pull` from a registry
(the fixture, over http: insecure), then a chat with the pulled model, at once."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ollama

from cli.ports import free_port
from shared.store import Store
from tests.cli.test_main import _env, _stopped
from tests.registry import Registry, host_of, serving, tiny_gguf
from worker.fake_engine import REPLY


async def _up(base: str, serve: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while True:
            assert serve.poll() is None, f"herd serve exited with {serve.returncode}"
            assert time.monotonic() < deadline, "the API never answered"
            try:
                await client.get(f"{base}/api/version", timeout=5)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)


async def test_ollama_pull_then_chat_through_herd_serve(tmp_path: Path) -> None:
    registry = Registry()
    registry.add_model("library/tiny:latest", tiny_gguf(tmp_path / "t.gguf", weights=4096))
    store = tmp_path / "store"
    port = free_port()
    env = _env(HERD_HOST=f"127.0.0.1:{port}", HERD_MODELS_DIR=str(store))
    async with serving(registry):
        command = [sys.executable, "-m", "cli", "serve"]
        serve = await asyncio.to_thread(subprocess.Popen, command, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            await _up(base, serve)
            client = ollama.AsyncClient(host=base)
            name = f"{host_of(registry)}/library/tiny:latest"
            statuses = [p.status async for p in await client.pull(name, insecure=True, stream=True)]
            assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
            # no wait: the model is served when its pull says success
            answer = await client.chat(model=name, messages=[{"role": "user", "content": "hi"}])
            assert answer.message.content == REPLY
            listed = {m.model: m for m in (await client.list()).models}
            stored = Store(store).get(name)
            assert stored is not None
            manifest = registry.manifests["library/tiny:latest"]
            # the manifest as the registry sent it: Ollama's digest, not a re-serialisation
            assert stored.digest == hashlib.sha256(manifest).hexdigest()
            assert listed[name].digest == stored.digest
            await client.close()  # type: ignore[no-untyped-call]
        finally:
            serve.send_signal(signal.SIGINT)
            assert _stopped(serve) == 0
