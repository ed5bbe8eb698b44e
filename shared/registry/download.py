"""One blob of a pull, fetched into the store's partial file in ranged parts that resume.

The blob is cut into up to ``parallel`` parts (none under ``MIN_PART_BYTES``), each fetched
with its own ``Range`` request and written at its offset. How far each part got is kept in a
sidecar JSON beside the partial (``…-partial.json``), saved as the bytes reach the file, so
an interrupted download (a dropped connection, a worker that died) goes on from there. A
registry that ignores ``Range`` is read in one stream from the start. The sha256 is checked
when the whole file is there (``Store.commit``), before the blob becomes visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from shared.registry.client import (
    PullFailed,
    Transient,
    check_scheme,
    check_status,
    request_failed,
)
from shared.store import DigestMismatch, Store

#: Parts are no smaller than this (a small blob is one or a few requests).
MIN_PART_BYTES = 1 << 20
#: Bytes a part buffers before writing them (and counting them as done).
FLUSH_BYTES = 1 << 20
#: How often the sidecar is saved while parts run.
SAVE_EVERY_S = 0.5


@dataclass
class Part:
    start: int
    end: int  # exclusive
    done: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class Plan:
    size: int
    parts: list[Part]

    @property
    def completed(self) -> int:
        return sum(part.done for part in self.parts)

    def dump(self) -> bytes:
        parts = [[p.start, p.end, p.done] for p in self.parts]
        return orjson.dumps({"size": self.size, "parts": parts})


def cut(size: int, parallel: int) -> Plan:
    count = max(1, min(parallel, size // MIN_PART_BYTES))
    bounds = [size * i // count for i in range(count + 1)]
    return Plan(size, [Part(bounds[i], bounds[i + 1]) for i in range(count)])


def sidecar_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def load_plan(sidecar: Path, size: int) -> Plan | None:
    """The saved progress of a download of ``size`` bytes; None if none or unusable."""
    try:
        data = orjson.loads(sidecar.read_bytes())
        plan = Plan(data["size"], [Part(*entry) for entry in data["parts"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    sound = all(0 <= p.done <= p.length for p in plan.parts)
    return plan if plan.size == size and sound else None


def save_plan(sidecar: Path, plan: Plan) -> None:
    temp = sidecar.with_name(sidecar.name + ".tmp")
    temp.write_bytes(plan.dump())
    os.replace(temp, sidecar)


def partial_progress(store: Store, digest: str) -> int:
    """Bytes of ``digest`` already downloaded (by anyone): for a pull waiting on another."""
    try:
        data = orjson.loads(sidecar_path(store.partial_path(digest)).read_bytes())
        return sum(int(entry[2]) for entry in data["parts"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return 0


class Counter:
    """What the progress reporter reads: bytes on disk, and bytes fetched this time."""

    def __init__(self) -> None:
        self.completed = 0
        self.fetched = 0


async def _write(fd: int, data: bytes, offset: int) -> None:
    def write() -> None:
        view = memoryview(data)
        at = offset
        while view:
            written = os.pwrite(fd, view, at)
            view, at = view[written:], at + written

    # a thread cannot be stopped: a cancelled part waits for its write to end, so the fd is
    # never closed (and its number reused by another file) under a write still running
    await _settle([asyncio.ensure_future(asyncio.to_thread(write))])


async def _settle(tasks: list[asyncio.Future[None]]) -> None:
    """Wait until every one of ``tasks`` is done, even if cancelled meanwhile (then raise
    ``CancelledError`` once they are); the first failure of theirs is raised."""
    cancelled = False
    while not all(task.done() for task in tasks):
        try:
            await asyncio.wait([task for task in tasks if not task.done()])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


async def _read(response: httpx.Response, fd: int, part: Part, counter: Counter) -> None:
    """Write ``response``'s body at ``part``'s offset; what arrived before a failure is
    kept (and counted done), so the next try asks only for the rest."""
    buffer = bytearray()

    async def flush() -> None:
        if buffer:
            await _write(fd, bytes(buffer), part.start + part.done)
            part.done += len(buffer)
            counter.completed += len(buffer)
            counter.fetched += len(buffer)
            buffer.clear()

    try:
        async for chunk in response.aiter_bytes():
            if part.done + len(buffer) + len(chunk) > part.length:
                raise PullFailed("download blob: the registry sent more than the blob's size")
            buffer += chunk
            if len(buffer) >= FLUSH_BYTES:
                await flush()
    except httpx.RequestError as exc:
        await flush()
        raise request_failed("download blob", exc) from exc
    except asyncio.CancelledError:  # a worker stopping: keep what came (at most FLUSH_BYTES)
        if buffer:
            os.pwrite(fd, bytes(buffer), part.start + part.done)
            part.done += len(buffer)
            counter.completed += len(buffer)
            counter.fetched += len(buffer)
        raise
    await flush()
    if part.done < part.length:
        raise Transient("download blob: the connection ended early")


async def _fetch_part(
    client: httpx.AsyncClient, url: str, fd: int, part: Part, counter: Counter
) -> None:
    headers = {"Range": f"bytes={part.start + part.done}-{part.end - 1}"}
    try:
        async with client.stream("GET", url, headers=headers) as response:
            check_status(response, "download blob")
            if response.status_code != 206:
                raise Transient("download blob: the registry stopped answering ranges")
            check_scheme(url, response, "download blob")
            await _read(response, fd, part, counter)
    except httpx.RequestError as exc:
        raise request_failed("download blob", exc) from exc


async def download(
    client: httpx.AsyncClient,
    url: str,
    digest: str,
    size: int,
    store: Store,
    *,
    parallel: int,
    counter: Counter,
) -> None:
    """Fetch blob ``digest`` (``size`` bytes) from ``url`` into the store, resuming what a
    partial file holds; verified and made visible on success."""
    store.blobs.mkdir(parents=True, exist_ok=True)
    partial = store.partial_path(digest)
    sidecar = sidecar_path(partial)
    ranged_url: str | None = None
    if size == 0:
        partial.write_bytes(b"")
    else:
        # a one-byte range first: the URL after redirects, and whether ranges work
        try:
            async with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as response:
                if response.status_code == 404:
                    raise PullFailed("pull model blob: file does not exist")
                check_status(response, "download blob")
                check_scheme(url, response, "download blob")
                if response.status_code == 206:
                    ranged_url = str(response.url)
                else:  # no ranges: this answer is the whole blob, read from the start
                    whole = cut(size, 1)

                    async def read(fd: int, part: Part) -> None:
                        await _read(response, fd, part, counter)

                    await _fill(partial, sidecar, whole, read, counter, fresh=True)
        except httpx.RequestError as exc:
            raise request_failed("download blob", exc) from exc
    if ranged_url is not None:
        saved = load_plan(sidecar, size) if partial.exists() else None
        plan = saved or cut(size, parallel)
        at = ranged_url

        async def fetch(fd: int, part: Part) -> None:
            await _fetch_part(client, at, fd, part, counter)

        await _fill(partial, sidecar, plan, fetch, counter, fresh=saved is None)
    try:
        await asyncio.to_thread(store.commit, digest, partial)
    except DigestMismatch as exc:  # the partial is gone: a next pull starts afresh
        raise PullFailed(exc.message) from exc
    finally:
        sidecar.unlink(missing_ok=True)


async def _fill(
    partial: Path,
    sidecar: Path,
    plan: Plan,
    work: Callable[[int, Part], Coroutine[Any, Any, None]],
    counter: Counter,
    *,
    fresh: bool,
) -> None:
    """Run ``work`` for every unfinished part of ``plan`` at once, into ``partial``; the
    sidecar says how far each got, whatever happens."""
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0), 0o644)
    try:
        if fresh:
            os.ftruncate(fd, plan.size)  # sparse: each part writes at its own offset
        save_plan(sidecar, plan)
        counter.completed = plan.completed
        pending = [part for part in plan.parts if part.done < part.length]
        tasks = [asyncio.create_task(work(fd, part)) for part in pending]
        saver = asyncio.create_task(_save_often(sidecar, plan))
        try:
            # a part that fails leaves the others to finish: the next try needs less
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in [*tasks, saver]:
                task.cancel()
            try:
                # every part ended (its writes too) before the fd closes, however often
                # this is cancelled meanwhile
                await _settle([asyncio.ensure_future(_quiet(task)) for task in [*tasks, saver]])
            finally:
                save_plan(sidecar, plan)  # the next try starts from here
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if errors:  # one that no retry mends first
            raise next((e for e in errors if isinstance(e, PullFailed)), errors[0])
    finally:
        os.close(fd)


async def _quiet(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(BaseException):
        await task


async def _save_often(sidecar: Path, plan: Plan) -> None:
    while True:
        await asyncio.sleep(SAVE_EVERY_S)
        save_plan(sidecar, plan)
