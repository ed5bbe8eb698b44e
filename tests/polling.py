"""Waiting on an observable state instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


async def until(
    condition: Callable[[], object],
    *,
    timeout_s: float = 5.0,
    interval_s: float = 0.02,
    message: str = "condition not met in time",
) -> None:
    """Return once ``condition()`` is true (it may be a coroutine function); fail the
    test with ``message`` if it is not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, message
        await asyncio.sleep(interval_s)
