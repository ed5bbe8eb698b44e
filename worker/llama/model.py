"""One loaded model: a ``llama_cpp.Llama`` and the thread that owns it.

A ``Llama`` object is not thread-safe, so each loaded model runs its jobs one after
another on a thread of its own (llama.cpp's KV prefix reuse makes a conversation's next
turn cheap). Work reaches the thread through an inbox of callables; retiring a model lets
the queued work finish first, then frees it on that same thread.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp
import structlog

from shared.messages import LoadedModel, LoadOptions
from worker.modelinfo import Description

log = structlog.get_logger()


@dataclass(frozen=True)
class LoadParams:
    """The load-time options a model instance was created with (a change means a reload)."""

    n_ctx: int
    n_batch: int
    n_gpu_layers: int
    main_gpu: int
    use_mmap: bool
    n_threads: int

    @classmethod
    def resolve(
        cls, options: LoadOptions, desc: Description, *, n_ctx: int, n_gpu_layers: int
    ) -> LoadParams:
        """Ollama's rules: num_ctx capped at the trained context, num_gpu -1 = the default."""
        ctx = options.num_ctx if options.num_ctx and options.num_ctx > 0 else n_ctx
        if desc.trained_context:
            ctx = min(ctx, desc.trained_context)
        gpu = options.num_gpu if options.num_gpu is not None and options.num_gpu >= 0 else None
        return cls(
            n_ctx=max(ctx, 4),
            n_batch=options.num_batch if options.num_batch and options.num_batch > 0 else 512,
            n_gpu_layers=n_gpu_layers if gpu is None else gpu,
            main_gpu=options.main_gpu or 0,
            use_mmap=True if options.use_mmap is None else options.use_mmap,
            n_threads=options.num_thread or os.cpu_count() or 1,
        )


def open_llama(desc: Description, params: LoadParams) -> llama_cpp.Llama:
    gpu = params.n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
    # an embedding model (BERT-like) reads a whole input in one batch
    batch = max(params.n_batch, params.n_ctx) if desc.embedding_only else params.n_batch
    return llama_cpp.Llama(
        model_path=str(desc.spec.path),
        n_ctx=params.n_ctx,
        n_batch=batch,
        n_ubatch=batch,
        n_gpu_layers=params.n_gpu_layers,
        main_gpu=params.main_gpu,
        use_mmap=params.use_mmap,
        n_threads=params.n_threads,
        n_threads_batch=params.n_threads,
        flash_attn=gpu,
        embedding=desc.embedding_only,
        verbose=False,
    )


class Resident:
    """A loaded instance: the ``Llama``, its owner thread and its inbox."""

    def __init__(self, desc: Description, params: LoadParams) -> None:
        self.desc, self.params = desc, params
        self.llm = open_llama(desc, params)
        self.on_gpu = params.n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        #: Jobs queued or running on this instance.
        self.busy = 0
        self._lock = threading.Lock()
        self._inbox: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._closed = threading.Event()
        #: Cancel flags of the generations queued or running here.
        self.cancels: set[threading.Event] = set()
        self._thread = threading.Thread(
            target=self._run, name=f"llama:{desc.spec.name}", daemon=True
        )
        self._thread.start()

    def status(self) -> LoadedModel:
        size = self.desc.advert.size_bytes + self.desc.kv_bytes(self.llm.n_ctx())
        return LoadedModel(
            name=self.desc.spec.name,
            size_bytes=size,
            size_vram=size if self.on_gpu else 0,
            context_length=self.llm.n_ctx(),
            expires_at="",  # the residency policy knows when, not the engine
            busy=self.busy,
        )

    def submit(self, work: Callable[[], None]) -> None:
        with self._lock:
            self.busy += 1
        self._inbox.put(work)

    def retire(self, *, cancel: bool = False) -> None:
        """Free the model once the work queued so far has run (``cancel``: stopped)."""
        if cancel:
            for flag in list(self.cancels):
                flag.set()
        self._inbox.put(None)

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def _run(self) -> None:
        try:
            while (work := self._inbox.get()) is not None:
                try:
                    work()
                except Exception:  # a work item reports its own errors; never end the thread
                    log.exception("llama_work_failed", model=self.desc.spec.name)
                finally:
                    with self._lock:
                        self.busy -= 1
        finally:
            self.llm.close()
            self._closed.set()
