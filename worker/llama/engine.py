"""The llama.cpp engine (``worker.llama`` is the only package that imports ``llama_cpp``).

Every servable model is described from its GGUF header at construction (no weights are
read); ``load`` creates a ``Runtime`` sized for the model's slots and a ``Scheduler`` (the
thread that owns it and batches its sequences), and ``load`` with other load-time options
replaces it: the old instance finishes the work submitted to it, then frees itself. When
to load and unload is the worker's residency policy, not this.

A generation's prompt is built off the model's thread; its outputs come back through an
``Outbox``. Closing a job's iterator sets its cancel flag: the scheduler frees its slot
at the next step. Pieces that are ready together reach the caller as one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

from shared.errors import EngineFailure, HerdError, ModelNotFound
from shared.messages import GenerateJob, LoadedModel, LoadOptions, ModelAdvert
from worker.devices import host_memory
from worker.engine import Embeddings, EngineOutput, Finish, Piece
from worker.gguf_header import read_header
from worker.llama.batch import Scheduler
from worker.llama.embed import embed
from worker.llama.model import (
    LoadParams,
    Runtime,
    auto_slots,
    context_plan,
    gpu_offload_supported,
    with_model_defaults,
)
from worker.llama.outbox import DONE, Outbox
from worker.llama.prompt import Vocab
from worker.llama.sequence import Sequence
from worker.memory import Estimate, Layout, estimate, read_layout
from worker.model_files import ModelSpec
from worker.modelinfo import Description, describe, model_info

log = structlog.get_logger()


class _Model:
    """A loaded instance: its runtime, scheduler and vocabulary helper."""

    def __init__(self, desc: Description, params: LoadParams) -> None:
        runtime = Runtime(desc, params)
        self.params = params
        self.vocab = Vocab(runtime.model)
        self.scheduler = Scheduler(runtime)

    @property
    def runtime(self) -> Runtime:
        return self.scheduler.runtime


class LlamaEngine:
    name = "llama"
    continues = True

    def __init__(
        self,
        specs: list[ModelSpec],
        *,
        n_ctx: int,
        n_gpu_layers: int,
        num_parallel: int | None = None,
        free_memory: Callable[[bool], int] | None = None,
    ) -> None:
        """``num_parallel``: slots per model (None: as many as fit, see ``auto_slots``);
        ``free_memory(gpu)``: the free bytes of the device a model would load on."""
        #: Guards the model tables below: ``set_models`` may swap them from a thread. They
        #: are replaced, never changed in place, so a reader holding one sees it whole.
        self._lock = threading.RLock()
        #: The names served, in order; ``_descriptions`` also keeps removed ones still loaded.
        self._served: list[str] = [s.name for s in specs]
        self._descriptions: dict[str, Description] = {s.name: describe(s) for s in specs}
        self._layouts: dict[str, Layout] = {s.name: read_layout(s.path) for s in specs}
        #: Adverts with ``memory_bytes`` (estimated once, for a load with default options).
        self._adverts: dict[str, ModelAdvert] = {}
        self._n_ctx = n_ctx
        self._n_gpu_layers = n_gpu_layers
        self._num_parallel = num_parallel
        self._free_memory = free_memory or (lambda gpu: host_memory().free_bytes)
        self._loaded: dict[str, _Model] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def models(self) -> list[ModelAdvert]:
        with self._lock:
            adverts = dict(self._adverts)
            for name in self._served:
                if name not in adverts:
                    need = self.memory_required(name, LoadOptions())
                    advert = self._descriptions[name].advert
                    adverts[name] = advert.model_copy(update={"memory_bytes": need})
            self._adverts = adverts
            return [adverts[name] for name in self._served]

    def set_models(self, specs: list[ModelSpec]) -> None:
        """Serve ``specs``: unchanged ones keep their description, new or changed ones are
        read (a header each: off the event loop), unreadable ones are left out."""
        with self._lock:
            known = dict(self._descriptions)
        fresh: dict[str, Description] = {}
        layouts: dict[str, Layout] = {}
        for spec in specs:
            old = known.get(spec.name)
            if old is not None and old.spec == spec:
                fresh[spec.name], layouts[spec.name] = old, self._layouts[spec.name]
                continue
            try:
                fresh[spec.name], layouts[spec.name] = describe(spec), read_layout(spec.path)
            except Exception as exc:  # one bad file or template must not stop the others
                log.warning("model_unreadable", model=spec.name, error=str(exc))
        with self._lock:
            # a removed model still loaded keeps its tables until it is unloaded
            kept = [n for n in tuple(self._loaded) if n not in fresh and n in self._descriptions]
            self._descriptions = {**fresh, **{n: self._descriptions[n] for n in kept}}
            self._layouts = {**layouts, **{n: self._layouts[n] for n in kept}}
            self._adverts = {n: a for n, a in self._adverts.items() if fresh.get(n) is known.get(n)}
            self._served = list(fresh)

    def full_model_info(self, name: str) -> dict[str, Any]:
        """/api/show's verbose ``model_info``: arrays in full (reads the GGUF header again)."""
        return model_info(read_header(self._describe(name).spec.path, full=True))

    def loaded(self) -> list[LoadedModel]:
        listed = []
        for name, model in self._loaded.items():
            size = self._estimate(name, model.params)
            listed.append(
                model.scheduler.status().model_copy(
                    update={"size_bytes": size.total, "size_vram": size.gpu}
                )
            )
        return listed

    def memory_estimate(self, name: str, options: LoadOptions) -> Estimate:
        """What loading ``name`` with ``options`` takes (``worker.memory``), with the
        parameters that load would use: those of the loaded instance if it matches."""
        current = self._loaded.get(name)
        if current is not None and _same_load(current.params, options, self, name):
            return self._estimate(name, current.params)
        return self._estimate(name, self._params(name, options))

    def memory_required(self, name: str, options: LoadOptions) -> int:
        """The device's share: the GPU's when layers are offloaded, else all of it."""
        need = self.memory_estimate(name, options)
        return need.gpu or need.total

    def _estimate(self, name: str, params: LoadParams) -> Estimate:
        return estimate(self._layouts[name], context_plan(self._describe(name), params))

    def slots(self, name: str) -> int:
        """Sequences ``name`` runs at once (as loaded, or as it would load now)."""
        model = self._loaded.get(name)
        if model is not None:
            return model.runtime.slots
        return self._params(name, LoadOptions()).slots

    async def start(self) -> None:
        """Preload the first model (the default one when served); the others load on
        demand, within the worker's cap on loaded models."""
        for name in self._served[:1]:
            await self.load(name, LoadOptions())

    async def close(self) -> None:
        """Stop every model; generations still running end with an error."""
        for name in list(self._loaded):
            await self.unload(name, cancel=True)

    def effective_options(self, name: str, options: LoadOptions) -> LoadOptions:
        desc = self._describe(name)
        params = LoadParams.resolve(
            with_model_defaults(options, desc.parameters),
            desc,
            n_ctx=self._n_ctx,
            n_gpu_layers=self._n_gpu_layers,
        )
        return LoadOptions(
            num_ctx=params.n_ctx,
            num_batch=params.n_batch,
            num_gpu=params.n_gpu_layers,
            main_gpu=params.main_gpu,
            use_mmap=params.use_mmap,
            num_thread=params.n_threads,
        )

    def _params(self, name: str, options: LoadOptions) -> LoadParams:
        desc = self._describe(name)
        options = with_model_defaults(options, desc.parameters)
        params = LoadParams.resolve(
            options, desc, n_ctx=self._n_ctx, n_gpu_layers=self._n_gpu_layers
        )
        slots = self._num_parallel
        if slots is None:
            gpu = params.n_gpu_layers != 0 and gpu_offload_supported()
            slots = auto_slots(desc, params.n_ctx, free_bytes=self._free_memory(gpu), on_gpu=gpu)
        return LoadParams.resolve(
            options, desc, n_ctx=self._n_ctx, n_gpu_layers=self._n_gpu_layers, slots=slots
        )

    async def load(self, name: str, options: LoadOptions) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            current = self._loaded.get(name)
            if current is not None and _same_load(current.params, options, self, name):
                return
            params = self._params(name, options)
            desc = self._describe(name)
            started = time.perf_counter()
            try:
                model = await asyncio.to_thread(_Model, desc, params)
            except (ValueError, RuntimeError, OSError, EngineFailure) as exc:
                raise EngineFailure(f"failed to load model '{name}': {exc}") from exc
            self._loaded[name] = model
            if current is not None:
                current.scheduler.retire()
            log.info(
                "model_loaded",
                model=name,
                n_ctx=params.n_ctx,
                slots=params.slots,
                seconds=round(time.perf_counter() - started, 2),
            )

    async def unload(self, name: str, *, cancel: bool = False) -> None:
        """Free the model once the work submitted to it has run (or is cancelled)."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            model = self._loaded.pop(name, None)
            if model is not None:
                model.scheduler.retire(cancel=cancel)
                await asyncio.to_thread(model.scheduler.wait_closed)
                log.info("model_unloaded", model=name)
            with self._lock:  # a model the store no longer has goes with its last instance
                if name not in self._served and name not in self._loaded:
                    self._descriptions = {n: d for n, d in self._descriptions.items() if n != name}
                    self._layouts = {n: lay for n, lay in self._layouts.items() if n != name}

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
        out = Outbox(loop=asyncio.get_running_loop())
        try:
            # built off the loop; a cancel stops a long truncation between its renders
            seq = await asyncio.to_thread(
                Sequence, model.runtime, model.vocab, job, out.cancel.is_set
            )
        except BaseException:
            out.cancel.set()
            raise
        scheduler = model.scheduler
        scheduler.generate(seq, out)
        held: object = None
        try:
            while True:
                item, held = (held, None) if held is not None else (await out.items.get(), None)
                if item is DONE:
                    return
                out.space.release()
                scheduler.resume()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Piece | Finish)
                # pieces that are ready together go out as one: one event, not many
                while isinstance(item, Piece) and not out.items.empty():
                    nxt = out.items.get_nowait()
                    if not isinstance(nxt, Piece):
                        held = nxt
                        break
                    out.space.release()
                    item = _join(item, nxt)
                yield item
        finally:
            out.cancel.set()

    async def embed(self, job: GenerateJob) -> Embeddings:
        model = await self._model(job)
        future: concurrent.futures.Future[Embeddings] = concurrent.futures.Future()
        out = Outbox(loop=asyncio.get_running_loop())

        def run(runtime: Runtime, seq: int) -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(embed(runtime, seq, model.vocab, job))
                except BaseException as exc:
                    future.set_exception(exc)
                    raise

        model.scheduler.run_alone(run, out)
        try:
            return await asyncio.wrap_future(future)
        except HerdError:
            raise
        except RuntimeError as exc:
            raise EngineFailure(f"llama.cpp failed to embed the input: {exc}") from exc
        finally:
            out.cancel.set()


def _join(a: Piece, b: Piece) -> Piece:
    logprobs = [*(a.logprobs or []), *(b.logprobs or [])]
    opened = a.thinking_opened or b.thinking_opened
    return Piece(a.text + b.text, logprobs or None, opened, a.tokens + b.tokens)


def _same_load(params: LoadParams, options: LoadOptions, engine: LlamaEngine, name: str) -> bool:
    """Whether ``options`` ask for what is loaded (the slots are the engine's own choice)."""
    desc = engine._describe(name)
    wanted = LoadParams.resolve(
        with_model_defaults(options, desc.parameters),
        desc,
        n_ctx=engine._n_ctx,
        n_gpu_layers=engine._n_gpu_layers,
    )
    return dataclasses.replace(wanted, slots=params.slots) == params
