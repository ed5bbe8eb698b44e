"""The CLI tests start APIs and workers on the session's Redis, as tests/api does."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis import Redis

from cli.verbs import TIMEOUT, Verbs
from shared import keys

VerbCall = Callable[..., Awaitable[str]]


def verb_caller(url: str) -> VerbCall:
    """``await call("ps")``: runs a verb against the API at ``url``; returns what it printed."""

    async def call(verb: str, *args: Any) -> str:
        out = io.StringIO()

        def run() -> None:
            with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
                getattr(Verbs(client, out), verb)(*args)

        await asyncio.to_thread(run)
        return out.getvalue()

    return call


@pytest.fixture(autouse=True)
def forget_seen_models(redis_url: str) -> None:
    """Each test starts with a catalog that knows only what its own workers advertise."""
    with Redis.from_url(redis_url) as client:
        client.delete(keys.CATALOG_SEEN)
