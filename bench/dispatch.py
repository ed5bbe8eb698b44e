"""Dispatch capacity: what one API process relays when the engine costs nothing.

A FakeEngine worker (``HERD_ENGINE=fake``, no pause per token, many slots) behind one
``herd api``; many concurrent clients in a few client processes:

- **chunks/s**: streaming ``/api/generate`` in a loop; every NDJSON line but the final one
  is a token chunk a client received. Short answers (FakeEngine's reply, 11 pieces) mix the
  per-job costs in; long ones (``LONG_TOKENS`` counted pieces, ``long=True``) measure the
  relay of tokens, and how many tokens reached the clients;
- **jobs/s**: short non-streaming requests (``num_predict`` 1) in a loop; completed answers.

Each measure also reports the CPU time the API process spent per chunk: on a machine
where clients, Redis and the worker share the cores, the rate is a floor, the CPU cost is
what one API core would relay alone.

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
from worker.fake_engine import COUNT_MARKER

#: Tokens of a long answer: FakeEngine counts ``0 1 2 ...``, a piece per number.
LONG_TOKENS = 256


@dataclass(frozen=True)
class Capacity:
    clients: int
    seconds: float
    chunks: int
    jobs: int
    errors: int
    #: Tokens the counted jobs carried (long answers: ``LONG_TOKENS`` each; else 0).
    tokens: int = 0
    #: CPU seconds of the API process, and chunks and jobs received, over the whole run
    #: (warm-up included).
    api_cpu_s: float = 0.0
    all_chunks: int = 0
    all_jobs: int = 0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def api_us_per_chunk(self) -> float:
        return 1e6 * self.api_cpu_s / max(1, self.all_chunks)

    @property
    def api_us_per_job(self) -> float:
        return 1e6 * self.api_cpu_s / max(1, self.all_jobs)


def fake_env() -> dict[str, str]:
    return {
        "HERD_ENGINE": "fake",
        "HERD_FAKE_TOKEN_DELAY_S": "0",
        "HERD_FAKE_MODELS": f'["{MODEL}"]',
        "HERD_NUM_PARALLEL": "256",
        "HERD_MAX_QUEUE": "100000",
    }


def measure(
    clients: int, seconds: float, procs: int, *, stream: bool, long: bool = False
) -> Capacity:
    """One fresh cluster; ``clients`` loops spread over ``procs`` processes, after a
    short warm-up."""
    with Cluster(fake_env()) as cluster:
        per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        jobs = [(cluster.api_port, n, seconds, stream, long) for n in per if n]
        ctx = multiprocessing.get_context("spawn")  # no forked copy of this process' state
        with ctx.Pool(len(jobs)) as pool:
            before = cluster.cpu_seconds()["api"]
            parts = pool.starmap(_client_process, jobs)
            api_cpu_s = cluster.cpu_seconds()["api"] - before
    n_jobs = sum(p[1] for p in parts)
    return Capacity(
        clients=clients,
        seconds=seconds,
        chunks=sum(p[0] for p in parts),
        jobs=n_jobs,
        errors=sum(p[2] for p in parts),
        tokens=n_jobs * LONG_TOKENS if long else 0,
        api_cpu_s=api_cpu_s,
        all_chunks=sum(p[3] for p in parts),
        all_jobs=sum(p[4] for p in parts),
    )


Counts = tuple[int, int, int, int, int]


def _client_process(port: int, clients: int, seconds: float, stream: bool, long: bool) -> Counts:
    return asyncio.run(_clients(port, clients, seconds, stream, long))


async def _clients(port: int, clients: int, seconds: float, stream: bool, long: bool) -> Counts:
    """Chunks, jobs and errors within the measured window; chunks and jobs of the whole
    run."""
    body = orjson.dumps(
        {
            "model": MODEL,
            "prompt": COUNT_MARKER if long else "hi",
            "raw": True,
            "stream": stream,
            # 0: the fake's whole reply (11 pieces)
            "options": {"num_predict": LONG_TOKENS if long else 0 if stream else 1},
        }
    )
    request = (
        f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    totals = [0, 0, 0, 0, 0]
    warmup = min(1.0, seconds / 4)
    start = time.perf_counter() + warmup
    stop = start + seconds

    async def loop() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (now := time.perf_counter()) < stop:
                writer.write(request)
                status, lines = await _response(reader)
                if status == 200:
                    totals[3] += max(0, lines - 1)
                    totals[4] += 1
                if now >= start and time.perf_counter() <= stop:
                    if status == 200:
                        totals[0] += max(0, lines - 1)  # the last line is the done chunk
                        totals[1] += 1
                    else:
                        totals[2] += 1
        finally:
            writer.close()

    await asyncio.gather(*(loop() for _ in range(clients)))
    return totals[0], totals[1], totals[2], totals[3], totals[4]


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
