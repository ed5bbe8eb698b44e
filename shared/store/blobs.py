"""Blobs by digest: validated digests, streamed writes hashed on the way to disk, and the
rename that makes a blob visible only once it is whole and verified."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterable
from pathlib import Path
from typing import BinaryIO

from shared.errors import InvalidRequest, PayloadTooLarge

_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
INVALID_DIGEST = "invalid digest format"


class DigestMismatch(InvalidRequest):
    """The bytes written do not hash to the digest they were sent as."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f'digest mismatch, expected "{expected}", got "{got}"')


def canonical_digest(text: str) -> str:
    """``sha256:<hex>`` (lower-case) from ``sha256:`` or ``sha256-`` forms; raises 400."""
    found = _DIGEST.match(text)
    if found is None:
        raise InvalidRequest(INVALID_DIGEST)
    return f"sha256:{found.group(1).lower()}"


def file_name(digest: str) -> str:
    """A blob's file name in ``blobs/`` (``sha256-<hex>``, Ollama's)."""
    return canonical_digest(digest).replace(":", "-")


def sha256_of(path: Path, *, chunk: int = 1 << 20) -> str:
    """The digest of a file, read in chunks (never whole into memory)."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            hasher.update(block)
    return f"sha256:{hasher.hexdigest()}"


async def write_stream(
    target: Path, chunks: AsyncIterable[bytes], *, limit: int | None
) -> tuple[str, int]:
    """Write ``chunks`` to ``target`` (truncated first), hashing as they come; returns the
    digest and the size. More than ``limit`` bytes stops the write with 413."""
    hasher = hashlib.sha256()
    size = 0

    def absorb(handle: BinaryIO, chunk: bytes) -> None:
        hasher.update(chunk)
        handle.write(chunk)

    # disk writes and hashing off the event loop: a multi-GB upload must not stall the
    # process's other requests (a thread hop per chunk costs microseconds)
    with target.open("wb") as handle:
        async for chunk in chunks:
            size += len(chunk)
            if limit is not None and size > limit:
                raise PayloadTooLarge(f"the blob is larger than the store allows ({limit} bytes)")
            await asyncio.to_thread(absorb, handle, chunk)
        await asyncio.to_thread(_sync, handle)
    return f"sha256:{hasher.hexdigest()}", size


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
