"""Dispatch capacity: what one API process relays when the engine costs nothing.

A FakeEngine worker (``HERD_ENGINE=fake``, no pause per token, many slots) behind one
``herd api``; many concurrent clients in a few client processes:

- **chunks/s**: streaming ``/api/generate`` in a loop; every NDJSON line but the final one
  is a token chunk a client received;
- **jobs/s**: short non-streaming requests (``num_predict`` 1) in a loop; completed answers.

The clients speak HTTP/1.1 over asyncio streams themselves (keep-alive, chunked bodies
counted by newlines, no JSON parsing): a general-purpose client would spend more CPU than
the API it measures, on the same cores.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass

import orjson

from bench.common import MODEL
from bench.herd import Cluster


@dataclass(frozen=True)
class Capacity:
    clients: int
    seconds: float
    chunks: int
    jobs: int
    errors: int

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


def fake_env() -> dict[str, str]:
    return {
        "HERD_ENGINE": "fake",
        "HERD_FAKE_TOKEN_DELAY_S": "0",
        "HERD_FAKE_MODELS": f'["{MODEL}"]',
        "HERD_NUM_PARALLEL": "256",
        "HERD_MAX_QUEUE": "100000",
    }


def measure(clients: int, seconds: float, procs: int, *, stream: bool) -> Capacity:
    """One fresh cluster; ``clients`` loops spread over ``procs`` processes, after a
    short warm-up."""
    with Cluster(fake_env()) as cluster:
        per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        jobs = [(cluster.api_port, n, seconds, stream) for n in per if n]
        ctx = multiprocessing.get_context("spawn")  # no forked copy of this process' state
        with ctx.Pool(len(jobs)) as pool:
            parts = pool.starmap(_client_process, jobs)
    return Capacity(
        clients=clients,
        seconds=seconds,
        chunks=sum(p[0] for p in parts),
        jobs=sum(p[1] for p in parts),
        errors=sum(p[2] for p in parts),
    )


def _client_process(port: int, clients: int, seconds: float, stream: bool) -> tuple[int, int, int]:
    return asyncio.run(_clients(port, clients, seconds, stream))


async def _clients(port: int, clients: int, seconds: float, stream: bool) -> tuple[int, int, int]:
    body = orjson.dumps(
        {
            "model": MODEL,
            "prompt": "hi",
            "raw": True,
            "stream": stream,
            "options": {"num_predict": 0 if stream else 1},  # 0: the fake's whole reply
        }
    )
    request = (
        f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    totals = [0, 0, 0]
    warmup = min(1.0, seconds / 4)
    start = time.perf_counter() + warmup
    stop = start + seconds

    async def loop() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (now := time.perf_counter()) < stop:
                writer.write(request)
                status, lines = await _response(reader)
                if now >= start and time.perf_counter() <= stop:
                    if status == 200:
                        totals[0] += max(0, lines - 1)  # the last line is the done chunk
                        totals[1] += 1
                    else:
                        totals[2] += 1
        finally:
            writer.close()

    await asyncio.gather(*(loop() for _ in range(clients)))
    return totals[0], totals[1], totals[2]


async def _response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """Read one response; its status and how many newline-ended lines its body had."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = head.lower()
    if b"transfer-encoding: chunked" in headers:
        lines = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return status, lines
            lines += data.count(b"\n") - 1  # less the chunk's own CRLF
    length = 0
    for line in headers.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    data = await reader.readexactly(length)
    return status, data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
