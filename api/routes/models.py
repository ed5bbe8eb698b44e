"""The model routes: GET /api/tags and /api/ps, POST /api/show, /api/copy and DELETE
/api/delete. Names resolve through ``api.aliases``. A model of the store (``HERD_MODELS_DIR``)
is copied and deleted there; the others (the default package, loose GGUFs) get aliases and
deletions, their files never deleted."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response

from api import bodies, control, gofmt, modelstore, responses
from api.modelstore import optional_store
from api.requests import Unload
from api.show import show
from api.state import AliasesDep, StateDep
from shared import keys, names
from shared.errors import MODEL_REQUIRED, InvalidRequest, ModelNotFound

router = APIRouter()


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(aliases: AliasesDep) -> dict[str, list[dict[str, Any]]]:
    """Every model a client can name, cluster-wide, newest first."""
    return responses.tags(await aliases.entries())


@router.get("/api/ps")
async def ps(state: StateDep) -> dict[str, list[dict[str, Any]]]:
    """Every model loaded anywhere in the cluster, from the workers' adverts."""
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
                    "details": responses.details(advert),
                    "expires_at": loaded.expires_at,
                    "size_vram": loaded.size_vram,
                    "context_length": loaded.context_length,
                }
            )
    # the model that stays longest first, as Ollama sorts
    models.sort(key=lambda m: responses.parse_time(m["expires_at"]), reverse=True)
    return {"models": models}


@router.post("/api/show")
async def show_route(request: Request, state: StateDep, aliases: AliasesDep) -> dict[str, Any]:
    body = bodies.parse(await request.body(), bodies.ShowRequest)
    model = body.model or body.name
    if not model:
        raise InvalidRequest(MODEL_REQUIRED)
    name = names.normalize(model)
    advert = await aliases.resolve(name)
    if advert is None:
        raise ModelNotFound.named(name)  # show names the normalised model
    user_agent = request.headers.get("user-agent", "")
    return await show(state.redis, name, advert, body, user_agent=user_agent)


def _name(text: str, role: str) -> str:
    try:
        return names.normalize(text)
    except InvalidRequest:
        raise InvalidRequest(f"{role} {gofmt.quote(text)} is invalid") from None


@router.post("/api/copy")
async def copy(request: Request, state: StateDep, aliases: AliasesDep) -> Response:
    """A model of the store gets a second manifest (``Store.copy``); any other served model
    an alias (``api.aliases``). 200 with an empty body, as Ollama answers."""
    body = bodies.parse(await request.body(), bodies.CopyRequest)
    source = _name(body.source, "source")
    destination = _name(body.destination, "destination")
    store = optional_store(state.settings)
    stored = None
    if store is not None:  # an alias of a store model copies the model itself
        stored = await asyncio.to_thread(store.get, await aliases.target(source) or source)
    if store is not None and stored is not None:
        copied = await asyncio.to_thread(store.copy, stored.name, destination)
        await aliases.release(destination)
        await modelstore.changed(state.redis)
        if copied is not None:  # answered once a worker serves the copy, as Ollama's is
            wait_s = 2 * state.settings.heartbeat_interval_s + 1
            await modelstore.served(state.registry, copied.name, copied.digest, within_s=wait_s)
    elif not await aliases.copy(source, destination):
        raise ModelNotFound(f"model {gofmt.quote(body.source)} not found")
    return Response(status_code=200)  # Ollama answers with an empty body


@router.delete("/api/delete")
async def delete(request: Request, state: StateDep, aliases: AliasesDep) -> Response:
    """An alias goes; a model of the store goes from the store (its blobs no other model
    names too) and is unloaded everywhere; any other served model is hidden."""
    body = bodies.parse(await request.body(), bodies.DeleteRequest)
    model = body.model or body.name
    if not model:
        raise InvalidRequest(MODEL_REQUIRED)
    name = _name(model, "name")
    store = optional_store(state.settings)
    removed = None
    if store is not None and await aliases.target(name) is None:
        removed = await asyncio.to_thread(store.delete, name)
    if removed is not None:
        unload = Unload(route="generate", model=model, name=removed.name)
        await control.unload(state.redis, state.registry, unload)
        await aliases.hide(removed.name)  # else the catalog of models seen keeps listing it
        await modelstore.changed(state.redis)
    elif not await aliases.delete(name):
        raise ModelNotFound.named(model)
    # no worker fetches it into its own store any more
    gone = removed.name if removed is not None else name
    await state.redis.hdel(keys.STORE_SOURCES, gone)  # type: ignore[misc]
    return Response(status_code=200)
