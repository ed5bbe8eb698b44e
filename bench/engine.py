"""The batched engine ceiling: llama-cpp-python's low-level API in the bench process,
every running sequence in one ``llama_decode`` per step, greedy sampling per sequence.

No HTTP, no Redis, no text handling: what continuous batching on this model, context and
thread count can give at most. Shaped as the worker's context (``n_seq_max`` = slots,
``kv_unified`` off, ``n_ctx`` per sequence, the same batch size and threads) and its step
(decoding tokens first, then prompt chunks within the batch, at most ``PREFILL_BUDGET``
while others decode), so the ratio isolates what Herd adds around the engine.
"""

from __future__ import annotations

import time
from typing import Any

import llama_cpp
from llama_cpp import _logger

from bench.common import Config, Stream
from worker.model_files import default_model

#: As ``worker.llama.batch.PREFILL_BUDGET`` (not imported: the bench measures, not shares).
PREFILL_BUDGET = 256


class Ceiling:
    """One model; a context per slot count (``slots``), rebuilt when it changes."""

    def __init__(self, config: Config) -> None:
        _logger.set_verbose(False)  # llama.cpp's load log would bury the results
        llama_cpp.llama_backend_init()
        self.config = config
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(
            str(default_model().path).encode(), params
        )
        if not self.model:
            raise RuntimeError("llama.cpp could not load the model")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.ctx: llama_cpp.llama_context_p | None = None
        self.slots = 0
        self.batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)

    def close(self) -> None:
        self._free_ctx()
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_model_free(self.model)

    def _free_ctx(self) -> None:
        if self.ctx is not None:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def _context(self, slots: int) -> llama_cpp.llama_context_p:
        if self.ctx is None or slots != self.slots:
            self._free_ctx()
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx = self.config.n_ctx * slots
            cp.n_batch = cp.n_ubatch = self.config.n_batch
            cp.n_seq_max = slots
            cp.kv_unified = False
            cp.n_threads = cp.n_threads_batch = self.config.threads
            cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as on a CPU worker
            self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
            if not self.ctx:
                raise RuntimeError("llama.cpp could not create a context")
            self.slots = slots
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        return self.ctx

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, True)
        if n < 0:
            raise RuntimeError("prompt too long to tokenize")
        return list(buf[:n])

    def run(self, texts: list[str], new_tokens: int, slots: int) -> list[Stream]:
        """All ``texts`` at once, each generating exactly ``new_tokens`` (end tokens are
        not special here: the ceiling does the full work asked of the others)."""
        ctx = self._context(max(slots, len(texts)))
        batch = self.batch
        started = time.perf_counter()
        streams = [Stream(sent=started) for _ in texts]
        prompts = [self.tokenize(t) for t in texts]
        samplers = [llama_cpp.llama_sampler_init_greedy() for _ in texts]
        pos = [0] * len(texts)
        pending = [list(p) for p in prompts]  # prompt tokens not yet decoded
        last: list[int | None] = [None] * len(texts)  # sampled, to be decoded next step
        live = set(range(len(texts)))
        try:
            while live:
                batch.n_tokens = 0
                rows: dict[int, int] = {}
                for i in sorted(live):
                    token = last[i]
                    if token is not None:
                        rows[i] = _add(batch, token, pos[i], i, True)
                        pos[i] += 1
                budget = self.config.n_batch - batch.n_tokens
                if batch.n_tokens:
                    budget = min(budget, PREFILL_BUDGET)
                for i in sorted(live):
                    if not pending[i] or budget <= 0:
                        continue
                    chunk, pending[i] = pending[i][:budget], pending[i][budget:]
                    budget -= len(chunk)
                    for k, token in enumerate(chunk):
                        final = not pending[i] and k == len(chunk) - 1
                        row = _add(batch, token, pos[i], i, final)
                        pos[i] += 1
                        if final:
                            rows[i] = row
                code = llama_cpp.llama_decode(ctx, batch)
                if code != 0:
                    raise RuntimeError(f"llama_decode returned {code}")
                now = time.perf_counter()
                for i, row in rows.items():
                    last[i] = llama_cpp.llama_sampler_sample(samplers[i], ctx, row)
                    stream = streams[i]
                    stream.tokens += 1
                    stream.chunks.append(now)
                    if stream.tokens >= new_tokens:
                        stream.ended = now
                        live.discard(i)
        finally:
            for sampler in samplers:
                llama_cpp.llama_sampler_free(sampler)
        return streams


# ``batch`` untyped: the ctypes stubs type seq_id's rows as arrays of arrays
def _add(batch: Any, token: int, pos: int, seq: int, logits: bool) -> int:
    row = int(batch.n_tokens)
    batch.token[row] = token
    batch.pos[row] = pos
    batch.n_seq_id[row] = 1
    batch.seq_id[row][0] = seq
    batch.logits[row] = logits
    batch.n_tokens = row + 1
    return row
