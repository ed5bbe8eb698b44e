"""What the lifespan builds and the routes use, reached through one dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from api.dispatch import Dispatcher
from api.registry import Registry
from shared.settings import Settings

if TYPE_CHECKING:  # api.catalog depends on this module
    from api.catalog import Catalog


@dataclass(frozen=True)
class AppState:
    settings: Settings
    redis: Redis
    registry: Registry
    dispatcher: Dispatcher
    #: Names clients see (aliases, deletions), cached like the registry's adverts.
    catalog: Catalog


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.herd
    return state


StateDep = Annotated[AppState, Depends(get_state)]
