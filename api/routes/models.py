"""GET /api/tags: every model a client can name, cluster-wide, through the catalog."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import ollama
from api.catalog import Entry, get_catalog
from api.state import StateDep

router = APIRouter()


def _tag(entry: Entry) -> dict[str, Any]:
    advert = entry.advert
    body: dict[str, Any] = {
        "name": entry.name,
        "model": entry.name,
        "modified_at": advert.modified_at,
        "size": advert.size_bytes,
        "digest": advert.digest,
        "details": ollama.details(advert, lengths=True),
    }
    if advert.capabilities:
        body["capabilities"] = list(advert.capabilities)
    return body


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(state: StateDep) -> dict[str, list[dict[str, Any]]]:
    """Newest first (the /v1 model list reuses it)."""
    entries = sorted(await get_catalog(state).entries(), key=lambda e: e.name)
    entries.sort(key=lambda e: ollama.parse_time(e.advert.modified_at), reverse=True)
    return {"models": [_tag(entry) for entry in entries]}
