"""The registry side of a push: a store model's blobs and manifest uploaded to an
Ollama-protocol (Docker registry v2) registry.

Each blob (the layers, then the config, Ollama's order) is asked for first with ``HEAD
…/blobs/<digest>``: one the registry has is skipped. Otherwise ``POST …/blobs/uploads/``
opens an upload (202 and a ``Location``) and one ``PUT <location>?digest=<digest>`` sends the
file, streamed from disk with its ``Content-Length`` (never held in memory). Docker's chunked
``PATCH`` uploads are not used: a monolithic PUT is part of the protocol every registry
serves. Last, ``PUT …/manifests/<tag>`` sends the manifest file's own bytes, so the model's
digest on the registry (and in a store that pulls it back) is the one this store shows.

There is no retry: a push run again skips every blob that arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import orjson

from shared import tasks
from shared.registry.client import Remote, read_capped
from shared.store import Layer, Manifest, Store
from shared.store.manifest import MANIFEST_MEDIA_TYPE

#: Ollama's ``errUnauthorized``: what a 401 from the registry becomes.
UNAUTHORIZED = "unauthorized: access denied"
#: Bytes read from the file per chunk of the request body.
CHUNK = 1 << 20
#: How often a running upload reports its progress.
TICK_S = 0.1
#: The most of a registry's answer read (its error, for the message): never the whole.
MAX_ANSWER_BYTES = 64 << 10
#: Connect and write as usual; a registry may hash a large blob before it answers the PUT.
TIMEOUT = httpx.Timeout(30.0, read=300.0)


class PushFailed(Exception):
    """A push that stopped; the text is what the client sees."""


def uploads_url(where: Remote) -> str:
    return f"{where.base}/v2/{where.namespace}/{where.model}/blobs/uploads/"


async def _detail(response: httpx.Response) -> str:
    """The registry's own error (Docker's ``{"errors": [{"code", "message"}]}``), if any;
    a body longer than ``MAX_ANSWER_BYTES`` is not read."""
    body = await read_capped(response, MAX_ANSWER_BYTES)
    with contextlib.suppress(ValueError, TypeError, KeyError, IndexError, AttributeError):
        error = orjson.loads(body or b"")["errors"][0]
        return f": {error.get('code', '')} {error.get('message', '')}".rstrip()
    return ""


async def _check(response: httpx.Response, what: str) -> None:
    if response.status_code == 401:
        raise PushFailed(UNAUTHORIZED)
    if response.status_code >= 400:
        detail = await _detail(response)
        raise PushFailed(f"{what}: registry answered {response.status_code}{detail}")


async def _send(
    client: httpx.AsyncClient, what: str, method: str, url: str | httpx.URL, **kwargs: Any
) -> httpx.Response:
    """The answer's status and headers; its body is never read whole (a hostile registry
    could send gigabytes), only an error's first ``MAX_ANSWER_BYTES``."""
    try:
        async with client.stream(method, url, **kwargs) as response:
            await _check(response, what)
            return response
    except httpx.RequestError as exc:
        raise PushFailed(f"{what}: {exc!r}") from exc


async def has_blob(client: httpx.AsyncClient, where: Remote, digest: str) -> bool:
    try:
        async with client.stream("HEAD", where.blob_url(digest)) as response:
            if response.status_code == 404:
                return False
            await _check(response, "check blob")
            return True
    except httpx.RequestError as exc:
        raise PushFailed(f"check blob: {exc!r}") from exc


class Sent:
    """Bytes of the blob handed to the connection so far (what progress lines show)."""

    def __init__(self) -> None:
        self.bytes = 0


async def _chunks(path: Path, sent: Sent) -> AsyncIterator[bytes]:
    handle: BinaryIO = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            sent.bytes += len(chunk)
            yield chunk
    finally:
        handle.close()


async def upload_blob(
    client: httpx.AsyncClient, where: Remote, path: Path, layer: Layer, sent: Sent
) -> None:
    """Open an upload and PUT the whole blob to it, streamed from ``path``."""
    started = await _send(client, "start upload", "POST", uploads_url(where))
    location = started.headers.get("location")
    if not location:
        raise PushFailed("start upload: the registry gave no upload location")
    # Location may be relative and may carry its own query (upload state): keep both
    target = started.url.join(location).copy_merge_params({"digest": layer.digest})
    # an explicit Content-Length: the body is streamed, not chunked (registries want it)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(layer.size)}
    await _send(client, "upload blob", "PUT", target, content=_chunks(path, sent), headers=headers)


def _line(layer: Layer, completed: int) -> dict[str, Any]:
    status = f"pushing {layer.digest.removeprefix('sha256:')[:12]}"
    return {"status": status, "digest": layer.digest, "total": layer.size, "completed": completed}


async def push_blobs(
    client: httpx.AsyncClient, store: Store, manifest: Manifest, where: Remote
) -> AsyncGenerator[dict[str, Any], None]:
    """Upload what the registry lacks of ``manifest``'s blobs; Ollama's progress lines."""
    blobs = [*manifest.layers, manifest.config]
    missing = [layer.digest for layer in blobs if not store.has_blob(layer.digest)]
    if missing:
        raise PushFailed(f"blobs missing from the store: {', '.join(missing)}")
    for layer in blobs:
        if await has_blob(client, where, layer.digest):
            yield _line(layer, layer.size)  # there already: reported whole, once
            continue
        sent = Sent()
        yield _line(layer, 0)
        path = store.blob_path(layer.digest)
        task = asyncio.create_task(upload_blob(client, where, path, layer, sent))
        try:
            while not (await asyncio.wait({task}, timeout=TICK_S))[0]:
                yield _line(layer, sent.bytes)
            task.result()
        finally:  # a client that left stops the upload
            if not task.done():
                await tasks.stop(task)
        yield _line(layer, layer.size)


async def push_manifest(client: httpx.AsyncClient, where: Remote, raw: bytes) -> None:
    headers = {"Content-Type": MANIFEST_MEDIA_TYPE}
    await _send(client, "push manifest", "PUT", where.manifest_url(), content=raw, headers=headers)
