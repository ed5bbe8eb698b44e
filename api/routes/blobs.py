"""``HEAD /api/blobs/:digest`` and ``POST /api/blobs/:digest``: the blobs ``/api/create``
builds models from (``ollama create`` and ``ollama.create_blob`` upload a GGUF here first).

An upload streams to the store while it is hashed, never held in memory; the request body
limit does not apply to it (``api.http.BLOB_UPLOAD``), ``HERD_MAX_BLOB_BYTES`` does. A blob
becomes visible only once whole and verified (``shared.store``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.modelstore import required_store
from api.state import StateDep
from shared.errors import PayloadTooLarge
from shared.store import canonical_digest

router = APIRouter()


@router.head("/api/blobs/{digest}")
async def head_blob(digest: str, state: StateDep) -> Response:
    """200 if the blob is in the store, else 404; no body either way (Ollama's)."""
    store = required_store(state.settings)
    present = store.has_blob(canonical_digest(digest))
    return Response(status_code=200 if present else 404)


@router.post("/api/blobs/{digest}")
async def upload_blob(digest: str, request: Request, state: StateDep) -> Response:
    """201 once stored; 200 (the body left unread) if it was there already; 400 for a bad
    digest or bytes that hash to another; 413 above ``HERD_MAX_BLOB_BYTES``."""
    store = required_store(state.settings)
    expected = canonical_digest(digest)
    if store.has_blob(expected):
        return Response(status_code=200)
    limit = state.settings.max_blob_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:  # refused before a byte is read
        raise PayloadTooLarge(f"the blob is larger than the store allows ({limit} bytes)")
    await store.write_blob(expected, request.stream(), limit=limit)
    return Response(status_code=201)
