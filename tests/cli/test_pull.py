"""``herd pull``: bars per layer, Ollama's status lines, the API's errors as exit status 1."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from rich.console import Console

from cli.main import main
from cli.pull import pull
from cli.verbs import TIMEOUT, VerbError
from tests.api.test_pull import start_puller
from tests.conftest import ApiFactory, ProcessFactory
from tests.registry import Registry, host_of, serving, tiny_gguf


async def test_herd_pull(
    api: ApiFactory,
    redis: Redis,
    redis_url: str,
    herd_process: ProcessFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = Registry()
    model = registry.add_model(
        "library/tiny:latest", tiny_gguf(tmp_path / "t.gguf", weights=1 << 18)
    )
    async with serving(registry):
        await start_puller(herd_process, redis, redis_url, tmp_path / "store")
        client = await api()
        url = str(client.base_url)
        name = f"{host_of(registry)}/library/tiny"
        out = io.StringIO()

        def run(model_name: str) -> None:
            with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
                pull(http, model_name, insecure=True, console=Console(file=out, width=100))

        await asyncio.to_thread(run, name)
        text = out.getvalue()
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        assert lines[0] == "pulling manifest"
        assert lines[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        for layer in model.layers:  # a bar per layer, whole, with its size
            bar = next(line for line in lines if line.startswith(f"pulling {layer.digest[7:19]}"))
            assert "━" in bar and ("bytes" in bar or "kB" in bar or "MB" in bar)
        with pytest.raises(VerbError, match="file does not exist"):
            await asyncio.to_thread(run, f"{host_of(registry)}/library/nope")
        # through `herd` itself: an error is one line and exit status 1
        monkeypatch.setenv("HERD_HOST", url)
        assert await asyncio.to_thread(main, ["pull", "a/b/c/d"]) == 1
        assert capsys.readouterr().err == "Error: invalid model name\n"
        assert await asyncio.to_thread(main, ["pull", name, "--insecure"]) == 0
        assert "success" in capsys.readouterr().out
