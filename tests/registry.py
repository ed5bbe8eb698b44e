"""A registry for pull tests: Ollama's (Docker v2) registry protocol over models built here
from tiny GGUFs, run by uvicorn on a free port in the test's event loop.

``GET /v2/<ns>/<model>/manifests/<tag>`` answers a manifest; ``GET …/blobs/<digest>``
redirects (307) to ``/data/<digest>``, which serves the bytes with ``Range`` support
(``ranges=False``: a server that ignores it). ``fail_once[digest] = n`` drops the connection
of the next response of that blob after ``n`` bytes; ``delay_s`` slows every 64 KiB chunk
(and every chunk of an upload's body).
It counts what it served (bytes per blob, manifest requests, ranges asked).

Pushes: ``HEAD …/blobs/<digest>`` (200 if held, else 404), ``POST …/blobs/uploads/`` (202
with a ``Location`` that carries its own query, as registries' upload state does), ``PUT
<location>&digest=<digest>`` (the body hashed and checked against the digest: 400
``DIGEST_INVALID`` if it differs) and ``PUT …/manifests/<tag>`` (the Docker v2 media type
and every blob it names present, else 400). With ``token`` set, each of those writes
without ``Authorization: Bearer <token>`` is a 401, as a registry that wants a login answers.
It records what was uploaded (bytes and ``Content-Length`` per digest) and the manifests'
``Content-Type``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import gguf
import numpy as np
import orjson
import uvicorn
from starlette.types import Receive, Scope, Send

from cli.ports import free_port
from shared.store import Config, Layer, Manifest, MediaType
from shared.store.manifest import MANIFEST_MEDIA_TYPE

CHUNK = 64 * 1024


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def tiny_gguf(path: Path, *, weights: int, seed: int = 0) -> bytes:
    """A GGUF holding one f32 tensor of ``weights`` random values (4 bytes each)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_block_count(1)
    values = np.random.default_rng(seed).standard_normal(weights).astype(np.float32)
    writer.add_tensor("token_embd.weight", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@dataclass
class Model:
    manifest: bytes
    layers: list[Layer]  # the config last, as a pull goes through them

    @property
    def gguf(self) -> Layer:
        return self.layers[0]


@dataclass
class Registry:
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)  # "ns/model:tag" -> bytes
    ranges: bool = True
    delay_s: float = 0.0
    fail_once: dict[str, int] = field(default_factory=dict)
    served: Counter[str] = field(default_factory=Counter)  # digest -> bytes sent
    manifest_requests: Counter[str] = field(default_factory=Counter)
    range_starts: dict[str, list[int]] = field(default_factory=dict)
    url: str = ""
    token: str | None = None
    uploaded: Counter[str] = field(default_factory=Counter)  # digest -> bytes received
    upload_lengths: dict[str, str | None] = field(default_factory=dict)  # Content-Length
    manifest_types: dict[str, str | None] = field(default_factory=dict)  # key -> Content-Type
    _uploads: set[str] = field(default_factory=set)  # open upload ids

    def add_model(self, name: str, gguf_bytes: bytes, *, template: str = "{{ .Prompt }}") -> Model:
        """``name`` (``ns/model:tag``) with a GGUF, a template layer and a config."""
        model_layer = self._blob(gguf_bytes, MediaType.MODEL)
        template_layer = self._blob(template.encode(), MediaType.TEMPLATE)
        config = Config(model_family="llama", file_type="F32")
        config_layer = self._blob(config.model_dump_json().encode(), MediaType.CONFIG)
        manifest = Manifest(config=config_layer, layers=[model_layer, template_layer])
        raw = manifest.dump()
        self.manifests[name] = raw
        return Model(raw, [model_layer, template_layer, config_layer])

    def _blob(self, data: bytes, media_type: str) -> Layer:
        digest = digest_of(data)
        self.blobs[digest] = data
        return Layer(media_type=media_type, digest=digest, size=len(data))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path: str = scope["path"]
        method: str = scope["method"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if method in ("POST", "PUT", "PATCH"):
            return await self._write(scope, receive, send, headers)
        if found := re.fullmatch(r"/v2/([^/]+)/([^/]+)/manifests/([^/]+)", path):
            key = f"{found[1]}/{found[2]}:{found[3]}"
            self.manifest_requests[key] += 1
            if key not in self.manifests:
                return await _plain(send, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            return await _plain(send, 200, self.manifests[key])
        if found := re.fullmatch(r"/v2/[^/]+/[^/]+/blobs/(sha256:[0-9a-f]{64})", path):
            if method == "HEAD":
                return await _plain(send, 200 if found[1] in self.blobs else 404, b"")
            location = f"/data/{found[1]}".encode()
            return await _plain(send, 307, b"", [(b"location", location)])
        if (found := re.fullmatch(r"/data/(sha256:[0-9a-f]{64})", path)) and found[1] in self.blobs:
            return await self._data(send, found[1], headers.get("range"))
        await _plain(send, 404, b"not found")

    async def _write(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]
    ) -> None:
        """The push side: open an upload, finish it with the blob, put a manifest."""
        path: str = scope["path"]
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            challenge = (b"www-authenticate", b'Bearer realm="fixture",service="fixture"')
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            return await _plain(send, 401, body, [challenge])
        repo = r"/v2/([^/]+)/([^/]+)"
        if scope["method"] == "POST" and re.fullmatch(f"{repo}/blobs/uploads/", path):
            upload = uuid.uuid4().hex
            self._uploads.add(upload)
            location = f"{path}{upload}?_state=s{upload[:8]}".encode()
            return await _plain(send, 202, b"", [(b"location", location)])
        found = re.fullmatch(f"{repo}/blobs/uploads/([0-9a-f]{{32}})", path)
        if scope["method"] == "PUT" and found and found[3] in self._uploads:
            query = parse_qs(scope["query_string"].decode())
            assert query.get("_state") == [f"s{found[3][:8]}"], query  # its own query kept
            digest = query["digest"][0]
            data = await _body(receive, self.delay_s)
            self.uploaded[digest] += len(data)
            self.upload_lengths[digest] = headers.get("content-length")
            if digest_of(data) != digest:
                return await _plain(send, 400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
            self._uploads.discard(found[3])
            self.blobs[digest] = data
            where = f"/v2/{found[1]}/{found[2]}/blobs/{digest}".encode()
            return await _plain(send, 201, b"", [(b"location", where)])
        found = re.fullmatch(f"{repo}/manifests/([^/]+)", path)
        if scope["method"] == "PUT" and found:
            key = f"{found[1]}/{found[2]}:{found[3]}"
            raw = await _body(receive)
            self.manifest_types[key] = headers.get("content-type")
            if headers.get("content-type") != MANIFEST_MEDIA_TYPE:
                return await _plain(send, 400, b'{"errors":[{"code":"MANIFEST_INVALID"}]}')
            manifest = Manifest.read(raw)
            if any(layer.digest not in self.blobs for layer in manifest.blobs()):
                return await _plain(send, 400, b'{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN"}]}')
            self.manifests[key] = raw
            return await _plain(send, 201, b"")
        await _plain(send, 404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')

    async def _data(self, send: Send, digest: str, wanted: str | None) -> None:
        data = self.blobs[digest]
        start, end, status = 0, len(data), 200
        extra: list[tuple[bytes, bytes]] = []
        if wanted and self.ranges:
            found = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)
            assert found, wanted
            start = int(found[1])
            end = int(found[2]) + 1 if found[2] else len(data)
            status = 206
            extra.append((b"content-range", f"bytes {start}-{end - 1}/{len(data)}".encode()))
            self.range_starts.setdefault(digest, []).append(start)
        extra.append((b"content-length", str(end - start).encode()))
        await send({"type": "http.response.start", "status": status, "headers": extra})
        fail_after = self.fail_once.pop(digest, None) if end - start > 1 else None
        sent = 0
        for at in range(start, end, CHUNK):
            piece = data[at : min(at + CHUNK, end)]
            if fail_after is not None and sent + len(piece) > fail_after:
                piece = piece[: fail_after - sent]
                self.served[digest] += len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                raise ConnectionAbortedError("the registry drops this download (on purpose)")
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            self.served[digest] += len(piece)
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _body(receive: Receive, delay_s: float = 0.0) -> bytes:
    parts: list[bytes] = []
    while True:
        if delay_s:
            await asyncio.sleep(delay_s)
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _plain(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(registry: Registry) -> AsyncIterator[Registry]:
    """Run ``registry`` on a free port of 127.0.0.1 (``registry.url``) while the body runs."""
    port = free_port()
    config = uvicorn.Config(
        registry, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    registry.url = f"http://127.0.0.1:{port}"
    try:
        yield registry
    finally:
        server.should_exit = True
        await task


def host_of(registry: Registry) -> str:
    """``127.0.0.1:<port>``: a model name's host part for this registry."""
    return registry.url.removeprefix("http://")


def lines_of(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines()]
