"""One loaded model: llama.cpp's model and context, sized for its slots.

The context holds ``slots`` sequences (``n_seq_max``), each with a KV stream of its own
of ``n_ctx`` cells (``kv_unified`` off, as Ollama's ``num_parallel``): a sequence's
attention never sees another's cells, so a request's answer does not depend on what else
runs in the batch. An embedding model (BERT-like: its GGUF has a pooling type) gets one
slot, embeddings on, and a batch as large as its context (it reads an input in one go).

Every CPU model decodes on one thread (``cpu_decoder``), whichever model's thread asked:
llama.cpp's OpenMP threads belong to the thread that decodes, and a second team in the
process (a second model's thread) puts more threads than CPUs under libgomp, which then
stops spinning between operations: a model decoded 27 % slower (79 -> 58 tokens/s on two
cores, gemma3:270m) once another, idle, had answered once beside it. On one thread there
is one team, and CPU models take turns, which is what their shared cores allow anyway.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp import _internals, _logger
from pydantic import ValidationError

from shared.errors import EngineFailure
from shared.messages import LoadOptions
from worker.memory import Plan
from worker.modelinfo import Description

#: Slots chosen by ``auto``: at most this many on a CPU, and on a GPU.
AUTO_SLOTS_CPU = 4
AUTO_SLOTS_GPU = 16
#: llama.cpp's (and Ollama's) default batch; a request's ``num_batch`` may go up to the
#: context, or this when the context is smaller, and never past ``MAX_BATCH``.
DEFAULT_BATCH = 512
#: The largest batch a request gets (llama-server's default ``n_batch``). A batch is also
#: the micro-batch (as Ollama passes it, ``-b`` and ``-ub``), whose compute buffers grow
#: with batch x context: gemma3:270m at its 32k context needs 1.5 GiB at 512, 3.6 GiB at
#: 2048, 44 GiB at 32768 (which fails to load).
MAX_BATCH = 2048
#: The smallest batch: one holds a whole prompt piece (``worker.llama.pieces.MIN_PIECE``)
#: and more.
MIN_BATCH = 32


def cpu_count() -> int:
    """The CPUs this process may run on: the most threads a request's ``num_thread`` gets."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LoadParams:
    """The load-time options a model instance was created with (a change means a reload)."""

    n_ctx: int
    n_batch: int
    n_gpu_layers: int
    main_gpu: int
    use_mmap: bool
    n_threads: int
    #: Sequences decoded together (each with ``n_ctx`` cells of its own).
    slots: int = 1
    #: Let llama.cpp repack CPU weights (faster batches; answers then vary with batching).
    repack: bool = False

    @classmethod
    def resolve(
        cls,
        options: LoadOptions,
        desc: Description,
        *,
        n_ctx: int,
        n_gpu_layers: int,
        slots: int = 1,
    ) -> LoadParams:
        """A request's load-time options bounded to what the model and this machine allow,
        so none can make llama.cpp allocate or spawn without limit (and values that come
        to the same load compare equal: they cost no reload):

        - ``num_ctx``: at most the trained context (Ollama's rule), at least 4; 0 or
          negative: the worker's ``n_ctx``;
        - ``num_batch``: 32 up to the context (``DEFAULT_BATCH`` for a smaller one), as
          llama.cpp caps it, and at most ``MAX_BATCH``; 0 or negative: ``DEFAULT_BATCH``;
        - ``num_thread``: at most the CPUs this process may use; 0 or negative: all of them;
        - ``num_gpu``: -1 (or any negative): the default; ``main_gpu``: not negative.
        """
        ctx = options.num_ctx if options.num_ctx and options.num_ctx > 0 else n_ctx
        if desc.trained_context:
            ctx = min(ctx, desc.trained_context)
        ctx = max(ctx, 4)
        batch = DEFAULT_BATCH
        if options.num_batch and options.num_batch > 0:
            batch = min(max(MIN_BATCH, options.num_batch), max(DEFAULT_BATCH, ctx), MAX_BATCH)
        cpus = cpu_count()
        threads = cpus
        if options.num_thread and options.num_thread > 0:
            threads = min(options.num_thread, cpus)
        gpu = options.num_gpu if options.num_gpu is not None and options.num_gpu >= 0 else None
        return cls(
            n_ctx=ctx,
            n_batch=batch,
            n_gpu_layers=n_gpu_layers if gpu is None else gpu,
            main_gpu=max(0, options.main_gpu or 0),
            use_mmap=True if options.use_mmap is None else options.use_mmap,
            n_threads=threads,
            slots=1 if desc.embedding_only else max(1, slots),
        )


def with_model_defaults(options: LoadOptions, parameters: dict[str, list[Any]]) -> LoadOptions:
    """``options`` over the model's own load-time parameters (a Modelfile's ``PARAMETER
    num_ctx 8192``), as Ollama layers them; unusable values are left out."""
    given = {
        name: values[0]
        for name, values in parameters.items()
        if name in LoadOptions.model_fields and values
    }
    if not given:
        return options
    try:
        defaults = LoadOptions.model_validate(given)
    except ValidationError:
        return options
    return defaults.model_copy(update=options.model_dump(exclude_none=True))


def auto_slots(desc: Description, n_ctx: int, *, free_bytes: int, on_gpu: bool) -> int:
    """How many sequences fit: the device's free memory (less the weights, when they go
    there too) over one slot's KV cache, at most ``AUTO_SLOTS_*``; never below one."""
    cap = AUTO_SLOTS_GPU if on_gpu else AUTO_SLOTS_CPU
    per_slot = max(1, desc.kv_bytes(n_ctx))
    room = int(free_bytes * 0.9) - desc.advert.size_bytes
    return max(1, min(cap, room // per_slot))


def context_plan(desc: Description, params: LoadParams) -> Plan:
    """The context ``Runtime`` creates for ``params``: what the memory estimate reads."""
    on_gpu = params.n_gpu_layers != 0 and gpu_offload_supported()
    # an embedding model (BERT-like) reads a whole input in one batch
    n_batch = max(params.n_batch, params.n_ctx) if desc.embedding_only else params.n_batch
    return Plan(
        n_ctx=params.n_ctx,
        slots=params.slots,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_gpu_layers=params.n_gpu_layers if on_gpu else 0,
        flash_attn=on_gpu,
        swa_full=True,  # llama.cpp's default: a sliding-window layer's cache is full size
    )


@functools.cache
def cpu_decoder() -> ThreadPoolExecutor:
    """The one thread every CPU model's ``llama_decode`` runs on (see the module)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpu-decode")


@functools.cache
def _init_backend() -> None:
    """Once per process, as ``llama_cpp.Llama`` does; llama.cpp's log goes quiet."""
    _logger.set_verbose(False)
    llama_cpp.llama_backend_init()


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


class Runtime:
    """llama.cpp's model and context for one loaded model; used by one thread only."""

    def __init__(self, desc: Description, params: LoadParams) -> None:
        _init_backend()
        self.desc, self.params = desc, params
        plan = context_plan(desc, params)
        self.on_gpu = plan.n_gpu_layers != 0
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0x7FFFFFFF if params.n_gpu_layers < 0 else params.n_gpu_layers
        model_params.main_gpu = params.main_gpu
        model_params.use_mmap = params.use_mmap
        # Repacked CPU weights multiply a batch in row groups whose rounding depends on the
        # batch's size: a sequence's answer would change with what else runs beside it.
        # Plain weights give every row the same dot products, so batching changes nothing.
        model_params.use_extra_bufts = params.repack
        self.model = _internals.LlamaModel(
            path_model=str(desc.spec.path), params=model_params, verbose=False
        )
        try:
            self.slots = params.slots
            self.n_ctx = params.n_ctx  # per slot
            self.n_batch = plan.n_batch
            ctx_params = llama_cpp.llama_context_default_params()
            ctx_params.n_ctx = params.n_ctx * self.slots
            ctx_params.n_batch = plan.n_batch
            ctx_params.n_ubatch = plan.n_ubatch
            ctx_params.n_seq_max = self.slots
            ctx_params.kv_unified = False
            ctx_params.swa_full = plan.swa_full
            ctx_params.n_threads = params.n_threads
            ctx_params.n_threads_batch = params.n_threads
            ctx_params.embeddings = desc.embedding_only
            ctx_params.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if plan.flash_attn
                else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
            self.context = _internals.LlamaContext(
                model=self.model, params=ctx_params, verbose=False
            )
        except Exception:
            self.model.close()  # type: ignore[no-untyped-call]
            raise
        self.ctx = self.context.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = self.model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(self.model.n_embd())
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        if not self.batch.token:
            raise EngineFailure("llama.cpp could not allocate a batch")

    def close(self) -> None:
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        self.context.close()  # type: ignore[no-untyped-call]
        self.model.close()  # type: ignore[no-untyped-call]

    # -- the KV cache of one sequence ---------------------------------------------------

    def forget(self, seq: int, start: int = 0, end: int = -1) -> bool:
        """Drop positions [start, end) of sequence ``seq`` (end -1: to the end)."""
        if not self.memory:  # an encoder (BERT) keeps no cache
            return True
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq, start, end))

    def shift(self, seq: int, start: int, end: int, delta: int) -> None:
        llama_cpp.llama_memory_seq_add(self.memory, seq, start, end, delta)

    def can_shift(self) -> bool:
        return bool(self.memory) and bool(llama_cpp.llama_memory_can_shift(self.memory))

    def last_position(self, seq: int) -> int:
        """The highest position sequence ``seq`` holds in the KV cache; -1 when empty."""
        if not self.memory:
            return -1
        return int(llama_cpp.llama_memory_seq_pos_max(self.memory, seq))

    # -- the one batch ----------------------------------------------------------------

    def clear_batch(self) -> None:
        self.batch.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token to the batch; returns its row (where its logits will be)."""
        batch, row = self.batch, int(self.batch.n_tokens)
        batch.token[row] = token
        batch.pos[row] = pos
        batch.n_seq_id[row] = 1
        batch.seq_id[row][0] = seq
        batch.logits[row] = logits
        batch.n_tokens = row + 1
        return row

    def decode(self) -> None:
        if self.on_gpu:
            code = int(llama_cpp.llama_decode(self.ctx, self.batch))
        else:  # the one CPU team (see the module); this thread waits, as it would anyway
            code = int(cpu_decoder().submit(llama_cpp.llama_decode, self.ctx, self.batch).result())
        if code != 0:
            raise EngineFailure(f"llama.cpp failed to decode (llama_decode returned {code})")
