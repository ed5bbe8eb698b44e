"""Stopping a helper task from the task that started it."""

from __future__ import annotations

import asyncio
from typing import Any


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended; an error it ended with is raised here.

    Its own cancellation is not, but one aimed at the caller meanwhile still is:
    ``suppress(CancelledError)`` around ``await task`` swallows both, and a caller cancelled
    just then (a worker stopping its placement mid-load) carries on as if nothing happened.
    """
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.result()
