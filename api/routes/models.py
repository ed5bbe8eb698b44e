"""Model listing: what the cluster can serve, from the workers' adverts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.state import StateDep
from shared.messages import ModelAdvert

router = APIRouter()


def _tag(model: ModelAdvert) -> dict[str, Any]:
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": model.modified_at,
        "size": model.size_bytes,
        "digest": model.digest,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": model.family,
            "families": [model.family] if model.family else None,
            "parameter_size": model.parameter_size,
            "quantization_level": model.quantization_level,
        },
    }


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(state: StateDep) -> dict[str, list[dict[str, Any]]]:
    models = sorted(
        (await state.registry.models(fresh=True)).values(),
        key=lambda m: m.modified_at,
        reverse=True,
    )
    return {"models": [_tag(m) for m in models]}
