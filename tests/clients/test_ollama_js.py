"""The official ``ollama`` npm package (0.6.x) under Node against a running Herd.

``client.mjs`` runs chat (streamed and not), generate, list, show, embed, version and an
unknown model, and prints what it saw as one JSON line. ``models.mjs`` manages models against
a ``herd serve`` with a store of its own: pull from ``tests.registry``, create, push, delete.
The package is installed once into ``tests/clients/js/node_modules`` (git-ignored) and reused
on later runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli.ports import free_port
from tests.cli.test_main import _env, _stopped
from tests.cli.test_serve_pull import _up
from tests.clients.cluster import TOOLS_MODEL
from tests.registry import Registry, host_of, serving, tiny_gguf

JS_DIR = Path(__file__).parent / "js"


def _installed_version() -> str | None:
    manifest = JS_DIR / "node_modules" / "ollama" / "package.json"
    if not manifest.is_file():
        return None
    version: str = json.loads(manifest.read_text())["version"]
    return version


@pytest.fixture(scope="session")
def node_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    version = _installed_version()
    if version is None or not version.startswith("0.6."):
        command = ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"]
        command += ["--fetch-retries=1", "--fetch-timeout=20000"]
        try:
            done = subprocess.run(command, cwd=JS_DIR, capture_output=True, text=True, timeout=90)
        except subprocess.TimeoutExpired:
            pytest.skip("npm could not install ollama@0.6 within 90 s (registry unreachable?)")
        if done.returncode != 0 or _installed_version() is None:
            pytest.skip(f"npm could not install ollama@0.6 (registry unreachable?): {done.stderr}")
    return JS_DIR / "client.mjs"


@pytest.fixture(scope="module")
def seen(node_client: Path, herd_url: str) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(node_client), herd_url, TOOLS_MODEL],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # ollama-js logs with console.log on some error paths; the result is the last line
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_chat_stream_ends_with_done(seen: dict[str, Any]) -> None:
    chat = seen["chatStream"]
    assert "thrown" not in chat, chat
    assert chat["count"] > 2 and chat["text"].strip()
    assert chat["doneFlags"][-1] is True and not any(chat["doneFlags"][:-1])
    assert chat["doneReason"] == "stop" and chat["evalCount"] > 0
    assert chat["role"] == "assistant"


def test_chat_and_generate_not_streamed(seen: dict[str, Any]) -> None:
    assert seen["chat"] == {"text": seen["chatStream"]["text"], "done": True}
    assert seen["generate"]["done"] is True and seen["generate"]["text"].strip()
    assert seen["generate"]["doneReason"] == "stop"


def test_list_and_show(seen: dict[str, Any]) -> None:
    models = seen["list"]
    assert isinstance(models, list), models
    assert any(m["model"] == m["name"] == TOOLS_MODEL for m in models)
    show = seen["show"]
    assert show.get("hasModelInfo") is True, show
    assert "tools" in (show["capabilities"] or [])


def test_embed_and_version(seen: dict[str, Any]) -> None:
    assert seen["embed"].get("count") == 2 and seen["embed"]["length"] > 1, seen["embed"]
    assert isinstance(seen["version"], str) and seen["version"].split(".")[0].isdigit()


def test_unknown_model_is_a_response_error_with_the_json_message(seen: dict[str, Any]) -> None:
    # ollama-js reads the JSON `error` only when the Content-Type says application/json
    for key in ("unknownModel", "unknownModelStreamed"):
        assert seen[key] == {"thrown": "model 'nope:1b' not found", "status": 404}, key


async def test_pull_create_push_delete(node_client: Path, tmp_path: Path) -> None:
    """Each streamed call ends with ``success`` (ollama-js throws otherwise); the pushed
    model is on the registry with the digest Herd listed for it."""
    registry = Registry()
    registry.add_model("library/tiny:latest", tiny_gguf(tmp_path / "t.gguf", weights=4096))
    port = free_port()
    env = _env(HERD_HOST=f"127.0.0.1:{port}", HERD_MODELS_DIR=str(tmp_path / "store"))
    async with serving(registry):
        command = [sys.executable, "-m", "cli", "serve"]
        serve = await asyncio.to_thread(subprocess.Popen, command, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            await _up(base, serve)
            script = node_client.parent / "models.mjs"
            # in a thread: the registry answers from this event loop meanwhile
            done = await asyncio.to_thread(
                subprocess.run,
                ["node", str(script), base, host_of(registry)],
                capture_output=True,
                text=True,
                timeout=90,
            )
        finally:
            serve.send_signal(signal.SIGINT)
            assert await asyncio.to_thread(_stopped, serve) == 0
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    pull, create, push = seen["pull"], seen["create"], seen["push"]
    assert isinstance(pull, list) and pull[0] == "pulling manifest" and pull[-1] == "success", pull
    assert isinstance(create, list) and create[-2:] == ["writing manifest", "success"], create
    assert seen["show"] == "Be brief."
    assert isinstance(push, list) and push[0] == "retrieving manifest", push
    assert push[-2:] == ["pushing manifest", "success"]
    assert seen["pushNotStreamed"] == "success"
    manifest = registry.manifests["library/tiny-brief:latest"]
    assert seen["listed"] == hashlib.sha256(manifest).hexdigest()
    assert seen["delete"] == "success" and seen["listedAfterDelete"] is False
    assert "not found" in seen["pushDeleted"]["thrown"], seen["pushDeleted"]
