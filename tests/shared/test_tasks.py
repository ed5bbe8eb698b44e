"""Stopping a helper task: its cancellation stays its own."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared import tasks


async def _slow_to_stop(stopping: asyncio.Event) -> None:
    """A helper that takes a moment to end once cancelled (a refresh finishing a write)."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        stopping.set()
        await asyncio.sleep(0.2)
        raise


async def test_a_cancel_aimed_at_the_caller_while_it_stops_its_helper_still_reaches_it() -> None:
    stopping = asyncio.Event()
    went_on = False

    async def caller() -> None:
        nonlocal went_on
        helper = asyncio.create_task(_slow_to_stop(stopping))
        await asyncio.sleep(0)
        await tasks.stop(helper)  # the caller is cancelled while it waits here
        went_on = True
        await asyncio.sleep(60)

    running = asyncio.create_task(caller())
    await stopping.wait()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)
    assert running.cancelled() and not went_on


async def test_the_helpers_own_cancellation_is_not_raised_and_its_error_is() -> None:
    helper = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    await tasks.stop(helper)  # returns: its CancelledError was the helper's
    assert helper.cancelled()

    async def failing() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            raise RuntimeError("refresh failed")

    broken = asyncio.create_task(failing())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="refresh failed"):
        await tasks.stop(broken)
