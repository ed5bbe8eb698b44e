"""``herd create NAME -f Modelfile`` end to end against a running API with a store: the GGUF
uploaded as a blob, the model created from it, then one from that model; the progress
printed; refusals printed as one line with exit status 1; ``herd rm`` of a store model."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import pytest

from cli.main import main
from cli.verbs import Verbs
from shared.store import MediaType, Store
from tests.api.test_create import sha, tiny_gguf
from tests.conftest import ApiFactory


async def _herd(monkeypatch: pytest.MonkeyPatch, url: httpx.URL, *args: str) -> int:
    monkeypatch.setenv("HERD_HOST", f"{url.host}:{url.port}")
    return await asyncio.to_thread(main, list(args))


async def test_create_from_a_gguf_then_from_the_model(
    api: ApiFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = Store(tmp_path / "store")
    client = await api(models_dir=store.root)
    work = tmp_path / "work"
    work.mkdir()
    gguf = tiny_gguf(work / "tiny.gguf")
    digest = sha(gguf.read_bytes())
    (work / "Modelfile").write_text(
        "FROM ./tiny.gguf\n"
        'SYSTEM """You are\nterse."""\n'
        "PARAMETER temperature 0.2\n"
        "PARAMETER stop <end>\n"
        "MESSAGE user hi\n"
    )
    assert (
        await _herd(monkeypatch, client.base_url, "create", "tiny", "-f", str(work / "Modelfile"))
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == [
        "gathering model components",
        f"copying file {digest} 100%",
        "parsing GGUF",
        f"using existing layer {digest}",
    ]
    assert printed[-2:] == ["writing manifest", "success"]
    tiny = store.get("tiny")
    assert tiny is not None
    assert tiny.manifest.layer(MediaType.MODEL) is not None
    system = tiny.manifest.layer(MediaType.SYSTEM)
    params = tiny.manifest.layer(MediaType.PARAMS)
    assert system is not None and store.read_text(system.digest) == "You are\nterse."
    assert params is not None
    assert store.read_json(params.digest) == {"stop": ["<end>"], "temperature": 0.2}

    # FROM a model of the store, from another folder (the Modelfile's own is the base)
    (tmp_path / "Modelfile.2").write_text("from tiny\nsystem Be kind.\n")
    assert (
        await _herd(
            monkeypatch, client.base_url, "create", "kind", "-f", str(tmp_path / "Modelfile.2")
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[0] == f"using existing layer {digest}"
    kind = store.get("kind")
    assert kind is not None and kind.manifest.layer(MediaType.MODEL) == tiny.manifest.layer(
        MediaType.MODEL
    )

    # herd rm removes it from the store; the weights stay while tiny names them
    out = io.StringIO()
    with httpx.Client(base_url=str(client.base_url)) as sync:
        await asyncio.to_thread(Verbs(sync, out).rm, ["kind"])
    assert out.getvalue() == "deleted 'kind'\n"
    assert store.get("kind") is None and store.has_blob(digest)


@pytest.mark.parametrize(
    ("modelfile", "error"),
    [
        ("FROM ./tiny.gguf\nADAPTER ./lora.gguf\n", ":2: ADAPTER is not supported"),
        ("FROM ./missing.gguf\n", "FROM ./missing.gguf: no such file"),
        ("FROM nope\n", 'model "nope" not found'),
        ("FROM ./tiny.gguf\nPARAMETER temprature 1\n", ":2: unknown parameter 'temprature'"),
    ],
)
async def test_refusals_are_one_line_and_status_1(
    api: ApiFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    modelfile: str,
    error: str,
) -> None:
    client = await api(models_dir=tmp_path / "store")
    tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "Modelfile").write_text(modelfile)
    assert (
        await _herd(monkeypatch, client.base_url, "create", "m", "-f", str(tmp_path / "Modelfile"))
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and error in err and err.count("\n") == 1, err
