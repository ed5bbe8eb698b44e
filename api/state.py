"""What the lifespan builds and the routes use, reached through one dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from api.aliases import Aliases
from api.dispatch import Dispatcher
from api.registry import Registry
from shared.settings import Settings


@dataclass(frozen=True)
class AppState:
    settings: Settings
    redis: Redis
    registry: Registry
    dispatcher: Dispatcher
    #: Names clients see (aliases, deletions), cached like the registry's adverts.
    aliases: Aliases


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain def dependency in a thread, a hop per request
    state: AppState = request.app.state.herd
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_aliases(state: StateDep) -> Aliases:
    return state.aliases


AliasesDep = Annotated[Aliases, Depends(get_aliases)]
