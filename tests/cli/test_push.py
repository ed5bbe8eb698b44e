"""``herd push``: bars per layer, Ollama's status lines, the API's errors as exit status 1."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from cli.main import main
from cli.push import push
from cli.verbs import TIMEOUT, VerbError
from shared.store import Store
from tests.api.test_push import created
from tests.conftest import ApiFactory
from tests.registry import Registry, host_of, serving


async def test_herd_push(
    api: ApiFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = Registry()
    async with serving(registry):
        store = Store(tmp_path / "store")
        client = await api(models_dir=store.root)
        url = str(client.base_url)
        name = f"{host_of(registry)}/library/mine"
        await created(client, tmp_path, name)
        stored = store.get(name)
        assert stored is not None
        out = io.StringIO()

        def run(model_name: str, *, insecure: bool = True) -> None:
            with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
                push(http, model_name, insecure=insecure, console=Console(file=out, width=100))

        await asyncio.to_thread(run, name)
        lines = [line.strip() for line in out.getvalue().splitlines() if line.strip()]
        assert lines[0] == "retrieving manifest"
        assert lines[-2:] == ["pushing manifest", "success"]
        for layer in stored.manifest.blobs():  # a bar per layer, whole, with its size
            bar = next(line for line in lines if line.startswith(f"pushing {layer.digest[7:19]}"))
            assert "━" in bar and ("bytes" in bar or "kB" in bar)
        assert registry.manifests["library/mine:latest"] == stored.path.read_bytes()
        with pytest.raises(VerbError, match="not found"):
            await asyncio.to_thread(run, f"{host_of(registry)}/library/nope")
        with pytest.raises(VerbError, match="insecure protocol http"):
            await asyncio.to_thread(run, f"http://{name}", insecure=False)
        # through `herd` itself: an error is one line and exit status 1
        monkeypatch.setenv("HERD_HOST", url)
        assert await asyncio.to_thread(main, ["push", "a/b/c/d"]) == 1
        assert capsys.readouterr().err == "Error: invalid model name\n"
        registry.token = "secret"
        assert await asyncio.to_thread(main, ["push", name, "--insecure"]) == 1
        assert capsys.readouterr().err == "Error: unauthorized: access denied\n"
        registry.token = None
        assert await asyncio.to_thread(main, ["push", name, "--insecure"]) == 0
        assert "success" in capsys.readouterr().out
