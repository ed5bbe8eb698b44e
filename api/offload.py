"""Pure work on a request's body, off the event loop when the body is large (the checks of
``api.requests`` on 4 MiB of base64 images must not hold every other request up)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio

T = TypeVar("T")
P = ParamSpec("P")


#: Bodies from this size on are decoded and checked in a thread, off the event loop (base64
#: images: 4 MiB of them took 0.85 s on it before the check was made fast).
OFF_LOOP_BYTES = 256 * 1024


async def off_loop(size: int, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``work(*args, **kwargs)`` (pure: a check of ``api.requests``), in a thread when the
    body it looks at is ``size`` bytes of ``OFF_LOOP_BYTES`` or more, else at once."""
    if size < OFF_LOOP_BYTES:
        return work(*args, **kwargs)
    return await anyio.to_thread.run_sync(functools.partial(work, *args, **kwargs))
