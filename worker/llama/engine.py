"""The llama.cpp engine (``worker.llama_*`` are the only modules that import ``llama_cpp``).

Every servable model is described from its GGUF header at construction (no weights are
read); ``load`` creates a ``Resident`` (a ``Llama`` and its owner thread), and ``load``
with other load-time options replaces it: the old instance finishes the work queued on it,
then frees itself. When to load and unload is the worker's residency policy, not this.

Tokens reach the event loop through a bounded hand-off; closing a job's iterator sets its
cancel flag, which the model's thread checks between tokens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from shared.errors import EngineFailure, HerdError, ModelNotFound, Unavailable
from shared.messages import GenerateJob, LoadedModel, LoadOptions, ModelAdvert
from worker.catalog import ModelSpec
from worker.engine import Embeddings, EngineOutput, Finish, Piece
from worker.gguf_header import read_header
from worker.llama.embed import embed
from worker.llama.generate import generate
from worker.llama.model import LoadParams, Resident
from worker.llama.prompt import Vocab
from worker.modelinfo import Description, describe, model_info

log = structlog.get_logger()

#: Tokens a generation may run ahead of the event loop.
HANDOFF_LIMIT = 64
_DONE = object()


@dataclass
class _Handoff:
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[EngineOutput | BaseException | object] = field(default_factory=asyncio.Queue)
    space: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(HANDOFF_LIMIT))
    cancel: threading.Event = field(default_factory=threading.Event)

    def send(self, item: EngineOutput | BaseException | object) -> bool:
        """Hand one item to the event loop; False once the job was cancelled."""
        while not self.space.acquire(timeout=0.25):
            if self.cancel.is_set():
                return False
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        return not self.cancel.is_set()

    def post(self, item: BaseException | object) -> None:
        """Hand over a last item whether or not the reader keeps up (it may be gone)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class _Model:
    """A resident instance with its vocabulary helper."""

    def __init__(self, desc: Description, params: LoadParams) -> None:
        self.resident = Resident(desc, params)
        self.vocab = Vocab(self.resident.llm)


class LlamaEngine:
    name = "llama"

    def __init__(self, specs: list[ModelSpec], *, n_ctx: int, n_gpu_layers: int) -> None:
        self._descriptions: dict[str, Description] = {s.name: describe(s) for s in specs}
        self._n_ctx = n_ctx
        self._n_gpu_layers = n_gpu_layers
        self._loaded: dict[str, _Model] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def models(self) -> list[ModelAdvert]:
        return [d.advert for d in self._descriptions.values()]

    def full_model_info(self, name: str) -> dict[str, Any]:
        """/api/show's verbose ``model_info``: arrays in full (reads the GGUF header again)."""
        return model_info(read_header(self._describe(name).spec.path, full=True))

    def loaded(self) -> list[LoadedModel]:
        return [m.resident.status() for m in self._loaded.values()]

    async def start(self) -> None:
        """Preload the first model (the default one when served); the others load on
        demand, within the worker's cap on loaded models."""
        for name in list(self._descriptions)[:1]:
            await self.load(name, LoadOptions())

    async def close(self) -> None:
        """Stop every model; generations still running end without their Finish."""
        for name in list(self._loaded):
            await self.unload(name, cancel=True)

    def effective_options(self, name: str, options: LoadOptions) -> LoadOptions:
        params = LoadParams.resolve(
            options, self._describe(name), n_ctx=self._n_ctx, n_gpu_layers=self._n_gpu_layers
        )
        return LoadOptions(
            num_ctx=params.n_ctx,
            num_batch=params.n_batch,
            num_gpu=params.n_gpu_layers,
            main_gpu=params.main_gpu,
            use_mmap=params.use_mmap,
            num_thread=params.n_threads,
        )

    async def load(self, name: str, options: LoadOptions) -> None:
        desc = self._describe(name)
        params = LoadParams.resolve(
            options, desc, n_ctx=self._n_ctx, n_gpu_layers=self._n_gpu_layers
        )
        async with self._locks.setdefault(name, asyncio.Lock()):
            current = self._loaded.get(name)
            if current is not None and current.resident.params == params:
                return
            started = time.perf_counter()
            try:
                model = await asyncio.to_thread(_Model, desc, params)
            except (ValueError, RuntimeError, OSError) as exc:
                raise EngineFailure(f"failed to load model '{name}': {exc}") from exc
            self._loaded[name] = model
            if current is not None:
                current.resident.retire()
            log.info(
                "model_loaded",
                model=name,
                n_ctx=model.resident.llm.n_ctx(),
                seconds=round(time.perf_counter() - started, 2),
            )

    async def unload(self, name: str, *, cancel: bool = False) -> None:
        """Free the model once the jobs already queued on it have run (or are cancelled)."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            model = self._loaded.pop(name, None)
            if model is not None:
                model.resident.retire(cancel=cancel)
                await asyncio.to_thread(model.resident.wait_closed)
                log.info("model_unloaded", model=name)

    def _describe(self, name: str) -> Description:
        desc = self._descriptions.get(name)
        if desc is None:
            raise ModelNotFound.named(name)
        return desc

    async def _model(self, job: GenerateJob) -> _Model:
        model = self._loaded.get(job.model)
        if model is None:  # the residency policy normally loads it first
            await self.load(job.model, job.load)
            model = self._loaded[job.model]
        return model

    async def generate(self, job: GenerateJob) -> AsyncIterator[EngineOutput]:
        model = await self._model(job)
        handoff = _Handoff(loop=asyncio.get_running_loop())
        resident, vocab = model.resident, model.vocab

        def run() -> None:
            finished = False
            try:
                if not handoff.cancel.is_set():
                    outputs = generate(resident.llm, resident.desc, vocab, job, handoff.cancel)
                    for item in outputs:
                        finished = isinstance(item, Finish)
                        if not handoff.send(item):
                            break
            except HerdError as exc:
                finished = True
                handoff.send(exc)
            except Exception as exc:  # a llama.cpp failure must end the job, not the thread
                log.exception("generation_failed")
                finished = True
                handoff.send(EngineFailure(f"generation failed: {exc}"))
            if not finished:  # cancelled: by its reader (who is gone) or by unloading
                handoff.post(Unavailable("the model was unloaded before the answer finished"))
            handoff.post(_DONE)

        resident.cancels.add(handoff.cancel)
        resident.submit(run)
        try:
            while (item := await handoff.out.get()) is not _DONE:
                handoff.space.release()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Piece | Finish)
                yield item
        finally:
            handoff.cancel.set()
            resident.cancels.discard(handoff.cancel)

    async def embed(self, job: GenerateJob) -> Embeddings:
        model = await self._model(job)
        resident = model.resident
        future: concurrent.futures.Future[Embeddings] = concurrent.futures.Future()
        pooled = resident.desc.embedding_only
        trained = resident.desc.trained_context

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(
                    embed(resident.llm, model.vocab, job, pooled=pooled, trained=trained)
                )
            except HerdError as exc:
                future.set_exception(exc)
            except Exception as exc:
                log.exception("embedding_failed")
                future.set_exception(EngineFailure(f"embedding failed: {exc}"))

        resident.submit(run)
        return await asyncio.wrap_future(future)
