"""POST /api/push: a model of the store uploaded to its registry (``shared.registry.upload``),
with Ollama's progress lines: ``retrieving manifest``, ``pushing <12 hex>`` per layer,
``pushing manifest``, ``success``.

The push runs in this request, in the API process, which reads the store it serves
``/api/create`` from: it only reads, so it needs no worker, and it is bounded by the upload.
A push cut short (the client left, the pod stopped) is run again; the registry's blobs are
skipped then. The refusals that need no registry come first, as statuses: 400 for a missing
or invalid name, 501 without a store. After the first line, an error is the last line (with
``stream: false``, its status): a model not in the store, an http registry without
``insecure``, and what the registry refused (a 401: ``unauthorized: access denied``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import bodies, gofmt
from api.errors import progress_response
from api.modelstore import required_store
from api.state import StateDep
from shared import names
from shared.errors import EngineFailure, InvalidRequest, ModelNotFound
from shared.registry.client import PullFailed, remote
from shared.registry.upload import TIMEOUT, PushFailed, push_blobs, push_manifest
from shared.store import Manifest, Store

router = APIRouter()

MODEL_REQUIRED = "model is required"
#: Ollama's status before the error of a model it cannot read.
NOT_RETRIEVED = "couldn't retrieve manifest"


async def _progress(
    store: Store, name: str, model: str, *, insecure: bool
) -> AsyncIterator[dict[str, Any]]:
    yield {"status": "retrieving manifest"}
    try:
        where = remote(name, insecure=insecure)
    except PullFailed as exc:  # http without insecure: Ollama's `insecure protocol http`
        raise EngineFailure(str(exc)) from exc
    stored = await asyncio.to_thread(store.get, model)
    if stored is None:
        yield {"status": NOT_RETRIEVED}
        raise ModelNotFound(f"model {gofmt.quote(name)} not found")
    # the file's bytes, read once: the manifest pushed is exactly the one whose blobs go
    raw = await asyncio.to_thread(stored.path.read_bytes)
    manifest = Manifest.read(raw)
    try:
        async with httpx.AsyncClient(follow_redirects=True, timeout=TIMEOUT) as client:
            # closed with this generator: a client that leaves stops the running upload
            async with contextlib.aclosing(push_blobs(client, store, manifest, where)) as blobs:
                async for line in blobs:
                    yield line
            yield {"status": "pushing manifest"}
            await push_manifest(client, where, raw)
    except PushFailed as exc:
        raise EngineFailure(str(exc)) from exc
    yield {"status": "success"}


@router.post("/api/push")
async def push(request: Request, state: StateDep) -> Response:
    body = bodies.parse(await request.body(), bodies.RegistryRequest)
    name = body.model or body.name
    if not name:
        raise InvalidRequest(MODEL_REQUIRED)
    model = names.normalize(name)  # 400 `invalid model name`
    store = required_store(state.settings)
    lines = _progress(store, name, model, insecure=body.insecure is True)
    return await progress_response(request, lines, stream=body.stream is not False)
