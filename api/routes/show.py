"""POST /api/show."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.body import parse_body
from api.catalog import CatalogDep
from api.show import ShowRequest, show
from api.state import StateDep
from shared import names
from shared.errors import MODEL_REQUIRED, InvalidRequest, ModelNotFound

router = APIRouter()


@router.post("/api/show")
async def show_route(request: Request, state: StateDep, catalog: CatalogDep) -> dict[str, Any]:
    body = await parse_body(request, ShowRequest)
    model = body.model or body.name
    if not model:
        raise InvalidRequest(MODEL_REQUIRED)
    name = names.normalize(model)
    advert = await catalog.resolve(name)
    if advert is None:
        raise ModelNotFound.named(name)  # show names the normalised model
    user_agent = request.headers.get("user-agent", "")
    return await show(state.redis, name, advert, body, user_agent=user_agent)
