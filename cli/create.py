"""``herd create NAME -f Modelfile``, as ``ollama create`` does it: read the Modelfile; a
``FROM`` that is a GGUF file is hashed and uploaded (``POST /api/blobs/sha256:…``, skipped if
the store has it) and sent as ``files``, anything else as ``from``; then ``/api/create``'s
progress lines are printed as they come."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console

from cli.modelfile import Modelfile, ModelfileError, read
from cli.verbs import VerbError, error_text

CHUNK = 1 << 20


def source(modelfile: Modelfile, folder: Path) -> Path | str:
    """``FROM``'s GGUF file (relative paths from the Modelfile's folder), or a model name."""
    value = modelfile.from_
    path = Path(value).expanduser()
    path = path if path.is_absolute() else folder / path
    looks_like_path = value.startswith(("/", "./", "../", "~")) or value.endswith(".gguf")
    if path.is_file():
        return path
    if path.is_dir():
        raise VerbError(
            f"FROM {value}: a folder (safetensors) cannot be imported; name a .gguf file"
        )
    if looks_like_path:
        raise VerbError(f"FROM {value}: no such file")
    return value


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            hasher.update(block)
    return f"sha256:{hasher.hexdigest()}"


def upload(client: httpx.Client, path: Path, digest: str) -> None:
    """The file as a blob, streamed from disk; nothing to send if the store has it."""
    url = f"/api/blobs/{digest}"
    if client.head(url).status_code == 200:
        return
    with path.open("rb") as handle:
        response = client.post(url, content=handle)
    if response.status_code >= 400:
        raise VerbError(error_text(response))


def _progress(client: httpx.Client, body: dict[str, Any]) -> Iterator[str]:
    with client.stream("POST", "/api/create", json={**body, "stream": True}) as response:
        if response.status_code >= 400:
            response.read()
            raise VerbError(error_text(response))
        for line in response.iter_lines():
            if line.strip():
                chunk = orjson.loads(line)
                if "error" in chunk:
                    raise VerbError(str(chunk["error"]))
                yield str(chunk.get("status", ""))


def create(client: httpx.Client, model: str, path: Path, console: Console) -> None:
    try:
        modelfile = read(path)
    except ModelfileError as exc:
        raise VerbError(str(exc)) from exc
    body = {"model": model, **modelfile.request()}
    found = source(modelfile, path.parent)
    try:
        if isinstance(found, Path):
            console.print("gathering model components", highlight=False)
            digest = sha256_file(found)
            upload(client, found, digest)
            console.print(f"copying file {digest} 100%", highlight=False)
            body["files"] = {found.name: digest}
        else:
            body["from"] = found
        for status in _progress(client, body):
            console.print(status, highlight=False)
    except httpx.HTTPError as exc:
        raise VerbError(f"could not reach Herd: {exc}") from exc
