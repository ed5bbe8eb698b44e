"""What the model's thread hands to the event loop: one ``Outbox`` per request (its
items, its back-pressure and its cancel flag), and ``post``, which delivers everything a
step produced in one wake-up of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

from worker.engine import EngineOutput

#: Items a sequence may run ahead of its reader before it sits out steps.
HANDOFF_LIMIT = 64
#: The end of a request's outputs.
DONE = object()


@dataclass(eq=False)
class Outbox:
    """What one request's work hands to the event loop, and its cancel flag."""

    loop: asyncio.AbstractEventLoop
    items: asyncio.Queue[EngineOutput | BaseException | object] = field(
        default_factory=asyncio.Queue
    )
    space: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(HANDOFF_LIMIT))
    cancel: threading.Event = field(default_factory=threading.Event)

    def put(self, item: EngineOutput | BaseException | object) -> None:
        """Queue ``item`` for the reader; it reaches the event loop at the next ``post``."""
        _outgoing().append((self, item))


_local = threading.local()


def _outgoing() -> list[tuple[Outbox, object]]:
    """What this thread has queued for event loops since its last ``post``."""
    pending: list[tuple[Outbox, object]] | None = getattr(_local, "pending", None)
    if pending is None:
        pending = _local.pending = []
    return pending


def post() -> None:
    """Hand everything this thread queued to the event loops: one wake-up per loop per
    step, not one per sequence (each wake-up is a write to the loop's self-pipe)."""
    pending = _outgoing()
    if not pending:
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Outbox, object]]] = {}
    for out, item in pending:
        by_loop.setdefault(out.loop, []).append((out, item))
    pending.clear()
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads
            loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[Outbox, object]]) -> None:
    for out, item in items:
        out.items.put_nowait(item)
