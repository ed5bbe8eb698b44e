"""POST /api/copy and DELETE /api/delete: aliases and removals in the shared catalog
(``api.catalog``; model files are never deleted)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict

from api import gofmt
from api.body import parse_body
from api.catalog import CatalogDep
from shared import names
from shared.errors import MODEL_REQUIRED, InvalidRequest, ModelNotFound

router = APIRouter()


class CopyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: str = ""
    destination: str = ""


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    name: str = ""  # deprecated spelling of ``model``


def _name(text: str, role: str) -> str:
    try:
        return names.normalize(text)
    except InvalidRequest:
        raise InvalidRequest(f"{role} {gofmt.quote(text)} is invalid") from None


@router.post("/api/copy")
async def copy(request: Request, catalog: CatalogDep) -> Response:
    body = await parse_body(request, CopyRequest)
    source = _name(body.source, "source")
    destination = _name(body.destination, "destination")
    if not await catalog.copy(source, destination):
        raise ModelNotFound(f"model {gofmt.quote(body.source)} not found")
    return Response(status_code=200)  # Ollama answers with an empty body


@router.delete("/api/delete")
async def delete(request: Request, catalog: CatalogDep) -> Response:
    body = await parse_body(request, DeleteRequest)
    model = body.model or body.name
    if not model:
        raise InvalidRequest(MODEL_REQUIRED)
    if not await catalog.delete(_name(model, "name")):
        raise ModelNotFound.named(model)
    return Response(status_code=200)
