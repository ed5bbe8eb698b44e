"""Herd's own engine (``worker.llama.LlamaEngine``, the worker's batch scheduler) alone, one
stream at a time: no Redis, API or HTTP. Beside direct llama-cpp-python and Herd as a
client sees it, it tells the engine's cost from the dispatch's.

It runs in a process of its own, as the worker does: llama.cpp's OpenMP threads belong to
the thread that decodes, and a second team in the bench process (the engine decodes on its
model's thread, direct on the main one) makes libgomp stop spinning between operations,
which slowed direct llama-cpp-python by a quarter on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from multiprocessing.connection import Connection

from bench.common import MODEL, Config, Stream
from shared.messages import GenerateJob, SamplingOptions
from worker.engine import Finish
from worker.llama.engine import LlamaEngine
from worker.model_files import default_model


class EngineAlone:
    def __init__(self, config: Config) -> None:
        ctx = multiprocessing.get_context("spawn")  # no forked copy of this process' state
        self._conn, child = ctx.Pipe()
        self._child = ctx.Process(target=_serve, args=(child, config.n_ctx), daemon=True)
        self._child.start()
        child.close()
        if self._conn.recv() != "ready":
            raise RuntimeError("the engine process did not start")

    def close(self) -> None:
        with contextlib.suppress(OSError):  # it may have died already
            self._conn.send(None)
        self._child.join(30)
        if self._child.is_alive():
            self._child.kill()

    def stream(self, text: str, new_tokens: int) -> tuple[Stream, float]:
        """One stream, and the CPU seconds the engine's process spent on it."""
        self._conn.send((text, new_tokens))
        result: tuple[Stream, float] = self._conn.recv()
        return result


def _serve(conn: Connection, n_ctx: int) -> None:
    engine = LlamaEngine([default_model()], n_ctx=n_ctx, n_gpu_layers=0, num_parallel=1)
    with asyncio.Runner() as runner:  # one loop for every stream: the hand-offs bind to it
        runner.run(_stream(engine, "Hello", 1))  # loads the model
        conn.send("ready")
        while (request := conn.recv()) is not None:
            before = time.process_time()
            stream = runner.run(_stream(engine, *request))
            conn.send((stream, time.process_time() - before))
        runner.run(engine.close())


async def _stream(engine: LlamaEngine, text: str, new_tokens: int) -> Stream:
    """Timed as ``bench.direct``: from before the prompt is built to the last token; a
    chunk is a piece with text, as the worker would publish it."""
    result = Stream(sent=time.perf_counter())
    job = GenerateJob(
        request_id=f"bench-{time.perf_counter_ns()}",
        model=MODEL,
        kind="generate",
        prompt=text,
        raw=True,
        options=SamplingOptions(temperature=0.0, num_predict=new_tokens),
        enqueued_at_ms=int(time.time() * 1000),
        deadline_ms=2**62,  # no queue here
    )
    async for output in engine.generate(job):
        if isinstance(output, Finish):
            result.tokens = output.n_decoded
        elif output.text:
            result.chunks.append(time.perf_counter())
    result.ended = time.perf_counter()
    return result
