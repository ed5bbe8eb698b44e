"""GET /api/ps: every model loaded anywhere in the cluster, from the workers' adverts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import ollama
from api.state import StateDep

router = APIRouter()


@router.get("/api/ps")
async def ps(state: StateDep) -> dict[str, list[dict[str, Any]]]:
    models: list[dict[str, Any]] = []
    for worker in await state.registry.workers(fresh=True):
        adverts = {advert.name: advert for advert in worker.models}
        for loaded in worker.loaded:
            advert = adverts.get(loaded.name)
            models.append(
                {
                    "name": loaded.name,
                    "model": loaded.name,
                    "size": loaded.size_bytes,
                    "digest": advert.digest if advert else "",
                    "details": ollama.details(advert),
                    "expires_at": loaded.expires_at,
                    "size_vram": loaded.size_vram,
                    "context_length": loaded.context_length,
                }
            )
    # the model that stays longest first, as Ollama sorts
    models.sort(key=lambda m: ollama.parse_time(m["expires_at"]), reverse=True)
    return {"models": models}
