"""What the lifespan builds and the routes use, reached through one dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from api.dispatch import Dispatcher
from api.registry import Registry
from shared.settings import Settings


@dataclass(frozen=True)
class AppState:
    settings: Settings
    redis: Redis
    registry: Registry
    dispatcher: Dispatcher


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.herd
    return state


StateDep = Annotated[AppState, Depends(get_state)]
