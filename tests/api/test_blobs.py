"""HEAD and POST /api/blobs/:digest over real HTTP, against a store in a temporary folder:
Ollama's statuses and texts, uploads larger than the request body limit, the blob limit,
nothing left behind by a failed upload, and memory that stays flat while 200 MB stream in."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from api import auth
from tests.conftest import ApiFactory


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _leftovers(store: Path) -> list[str]:
    """Files in ``blobs/`` that are not whole blobs (an upload's temporary file)."""
    folder = store / "blobs"
    names = [entry.name for entry in folder.iterdir()] if folder.is_dir() else []
    return [name for name in names if "-upload-" in name or name.endswith("-partial")]


async def test_head_then_upload_then_head(api: ApiFactory, tmp_path: Path) -> None:
    client = await api(models_dir=tmp_path)
    data = os.urandom(5000)
    digest = _digest(data)
    missing = await client.head(f"/api/blobs/{digest}")
    assert missing.status_code == 404 and missing.content == b""
    created = await client.post(f"/api/blobs/{digest}", content=data)
    assert created.status_code == 201 and created.content == b""
    assert (tmp_path / "blobs" / digest.replace(":", "-")).read_bytes() == data
    assert (await client.head(f"/api/blobs/{digest}")).status_code == 200
    # the dash form names the same blob
    assert (await client.head(f"/api/blobs/{digest.replace(':', '-')}")).status_code == 200
    # present already: 200 without reading the body (these bytes would not match)
    again = await client.post(f"/api/blobs/{digest}", content=b"something else")
    assert again.status_code == 200 and again.content == b""
    assert _leftovers(tmp_path) == []


async def test_a_mismatch_or_a_bad_digest_is_a_400(api: ApiFactory, tmp_path: Path) -> None:
    client = await api(models_dir=tmp_path)
    wrong = "sha256:" + "0" * 64
    data = b"not what the digest says"
    mismatch = await client.post(f"/api/blobs/{wrong}", content=data)
    assert mismatch.status_code == 400
    assert mismatch.json() == {
        "error": f'digest mismatch, expected "{wrong}", got "{_digest(data)}"'
    }
    for bad in ("sha256:abc", "md5-" + "0" * 64, "sha256:" + "g" * 64):
        posted = await client.post(f"/api/blobs/{bad}", content=b"x")
        assert (posted.status_code, posted.json()) == (400, {"error": "invalid digest format"})
        head = await client.head(f"/api/blobs/{bad}")
        assert head.status_code == 400 and head.content == b""
    assert _leftovers(tmp_path) == []
    assert not (tmp_path / "blobs").exists() or list((tmp_path / "blobs").iterdir()) == []


async def test_uploads_skip_the_body_limit_and_meet_the_blob_limit(
    api: ApiFactory, tmp_path: Path
) -> None:
    client = await api(models_dir=tmp_path, max_body_bytes=1024, max_blob_bytes=100_000)
    big = os.urandom(50_000)  # 49 times the request body limit
    assert (await client.post(f"/api/blobs/{_digest(big)}", content=big)).status_code == 201
    # other routes keep the body limit, paths under /api/blobs/ that are no blob too
    padded = b"{" + b" " * 2000 + b"}"
    assert (await client.post("/api/chat", content=padded)).status_code == 413
    assert (await client.post(f"/api/blobs/{_digest(big)}/x", content=padded)).status_code == 413
    too_big = os.urandom(100_001)
    announced = await client.post(f"/api/blobs/{_digest(too_big)}", content=too_big)
    assert announced.status_code == 413
    assert "larger than the store allows (100000 bytes)" in announced.json()["error"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for start in range(0, len(too_big), 8192):
            yield too_big[start : start + 8192]

    streamed = await client.post(f"/api/blobs/{_digest(too_big)}", content=chunked())
    assert streamed.status_code == 413
    assert (await client.head(f"/api/blobs/{_digest(too_big)}")).status_code == 404
    assert _leftovers(tmp_path) == []


async def test_a_client_that_leaves_mid_upload_leaves_nothing(
    api: ApiFactory, tmp_path: Path
) -> None:
    client = await api(models_dir=tmp_path)
    data = os.urandom(1 << 20)

    async def half_then_gone() -> AsyncIterator[bytes]:
        yield data[: 1 << 19]
        await asyncio.sleep(0.2)
        raise RuntimeError("the client gives up")

    with contextlib.suppress(RuntimeError, httpx.HTTPError):
        await client.post(f"/api/blobs/{_digest(data)}", content=half_then_gone())
    for _ in range(50):  # the server notices the disconnect on its own time
        if not _leftovers(tmp_path):
            break
        await asyncio.sleep(0.1)
    assert _leftovers(tmp_path) == []
    assert (await client.head(f"/api/blobs/{_digest(data)}")).status_code == 404


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_200_mb_stream_through_without_being_held(api: ApiFactory, tmp_path: Path) -> None:
    client = await api(models_dir=tmp_path)
    chunk, count = os.urandom(1 << 20), 200
    hasher = hashlib.sha256()
    for _ in range(count):
        hasher.update(chunk)
    digest = f"sha256:{hasher.hexdigest()}"

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    baseline, peak = _rss(), 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    response = await client.post(f"/api/blobs/{digest}", content=body())
    done.set()
    await sampler
    assert response.status_code == 201
    assert (tmp_path / "blobs" / digest.replace(":", "-")).stat().st_size == count << 20
    # server and client share this process: both together stay far below the 200 MB
    assert peak - baseline < 40 << 20, f"RSS grew by {(peak - baseline) >> 20} MB"


async def test_without_a_store_the_blob_routes_say_so(api: ApiFactory) -> None:
    client = await api()
    digest = "sha256:" + "0" * 64
    posted = await client.post(f"/api/blobs/{digest}", content=b"x")
    assert posted.status_code == 501
    assert posted.json() == {"error": "this server has no model store (set HERD_MODELS_DIR)"}
    assert (await client.head(f"/api/blobs/{digest}")).status_code == 501


def test_blob_and_create_routes_need_an_admin_key() -> None:
    assert auth.need("/api/blobs/sha256:" + "0" * 64) == auth.Need.ADMIN
    assert auth.need("/api/create") == auth.Need.ADMIN
