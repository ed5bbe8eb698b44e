"""The llama.cpp engine. The only module that imports ``llama_cpp``.

A ``Llama`` object is not thread-safe, so each loaded model has one thread of its own that
runs its jobs one after another (llama.cpp's KV prefix reuse makes a conversation's next
turn cheap). Tokens reach the event loop through a bounded hand-off; closing a job's
iterator sets its cancel flag, which the thread checks between tokens. Continuous batching
(many sequences per decode step) slots in behind the same ``generate`` signature.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import gguf
import llama_cpp
import structlog

from shared.errors import EngineFailure, HerdError, InvalidRequest
from shared.messages import GenerateJob, ModelAdvert, SamplingOptions
from worker.catalog import ModelSpec
from worker.engine import EngineOutput, Finish, Piece
from worker.templates import BUILTIN, ChatTemplate, JinjaTemplate, job_messages
from worker.textstream import TextStream

log = structlog.get_logger()

#: Tokens a generation may run ahead of the event loop.
HANDOFF_LIMIT = 64
_DONE = object()


@dataclass
class _Work:
    job: GenerateJob
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[EngineOutput | BaseException | object]
    space: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(HANDOFF_LIMIT))
    cancel: threading.Event = field(default_factory=threading.Event)

    def send(self, item: EngineOutput | BaseException | object) -> bool:
        """Hand one item to the event loop; False once the job was cancelled."""
        while not self.space.acquire(timeout=0.25):
            if self.cancel.is_set():
                return False
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        return not self.cancel.is_set()


class _LoadedModel:
    def __init__(self, spec: ModelSpec, *, n_ctx: int, n_gpu_layers: int) -> None:
        threads = os.cpu_count() or 1
        self.spec = spec
        self.llm = llama_cpp.Llama(
            model_path=str(spec.path),
            n_ctx=n_ctx,
            n_gpu_layers=n_gpu_layers,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=n_gpu_layers != 0,
            verbose=False,
        )
        self.template = self._template()
        self.advert = self._advert()
        self._inbox: queue.Queue[_Work | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"llama:{spec.name}", daemon=True)
        self._thread.start()

    def _template(self) -> ChatTemplate:
        if self.spec.chat_format is not None:
            return BUILTIN[self.spec.chat_format]
        source = self.llm.metadata.get("tokenizer.chat_template")
        if source is None:
            raise EngineFailure(f"{self.spec.name}: the GGUF has no chat template")
        piece = self.llm._model.token_get_text
        return JinjaTemplate(
            source,
            bos_token=piece(self.llm.token_bos()) if self.llm.token_bos() >= 0 else "",
            eos_token=piece(self.llm.token_eos()) if self.llm.token_eos() >= 0 else "",
        )

    def _advert(self) -> ModelAdvert:
        meta = self.llm.metadata
        arch = meta.get("general.architecture", "")
        file_type = meta.get("general.file_type")
        quant = ""
        if file_type is not None and file_type.isdigit():
            try:
                quant = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
            except ValueError:
                quant = ""
        stat = self.spec.path.stat()
        return ModelAdvert(
            name=self.spec.name,
            size_bytes=stat.st_size,
            digest=self.spec.digest,
            family=arch,
            parameter_size=meta.get("general.size_label", ""),
            quantization_level=quant,
            context_length=int(meta.get(f"{arch}.context_length", "0") or 0),
            modified_at=datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(),
        )

    def submit(self, work: _Work) -> None:
        self._inbox.put(work)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)
        self.llm.close()

    def _run(self) -> None:
        while (work := self._inbox.get()) is not None:
            if work.cancel.is_set():
                continue
            try:
                for item in self._generate(work.job, work.cancel):
                    if not work.send(item):
                        break
            except HerdError as exc:
                work.send(exc)
            except Exception as exc:  # a llama.cpp failure must end the job, not the thread
                log.exception("generation_failed")
                work.send(EngineFailure(f"generation failed: {exc}"))
            work.send(_DONE)

    def _generate(self, job: GenerateJob, cancel: threading.Event) -> Iterator[EngineOutput]:
        llm, opts = self.llm, job.options
        if job.raw:
            prompt, stops = job.prompt, []
        else:
            rendered = self.template.render(job_messages(job))
            prompt, stops = rendered.prompt, rendered.stops
        tokens = list(job.context or []) + llm.tokenize(
            prompt.encode(), add_bos=not job.context, special=True
        )
        n_ctx = llm.n_ctx()
        if len(tokens) >= n_ctx:
            raise InvalidRequest(
                "the prompt is longer than the context length currently available to the "
                f"model ({len(tokens)} tokens, context {n_ctx})"
            )
        limit = _limit(opts, room=n_ctx - len(tokens))
        text = TextStream([*stops, *(opts.stop or [])])
        llm.set_seed(
            opts.seed if opts.seed is not None and opts.seed >= 0 else random.getrandbits(31)
        )
        generated: list[int] = []
        reason: str = "length"
        started = first = time.perf_counter_ns()
        for token in llm.generate(
            tokens,
            temp=_pick(opts.temperature, 0.8),
            top_k=int(_pick(opts.top_k, 40)),
            top_p=_pick(opts.top_p, 0.9),
            min_p=_pick(opts.min_p, 0.0),
            repeat_penalty=_pick(opts.repeat_penalty, 1.0),
        ):
            if not generated:
                first = time.perf_counter_ns()
            if cancel.is_set():
                return
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                reason = "stop"
                break
            generated.append(token)
            piece = text.feed(llm.detokenize([token], prev_tokens=tokens + generated[:-1]))
            if piece:
                yield Piece(piece)
            if text.stopped:
                reason = "stop"
                break
            if len(generated) >= limit:
                break
        rest = text.finish()
        if rest:
            yield Piece(rest)
        ended = time.perf_counter_ns()
        yield Finish(
            done_reason="stop" if reason == "stop" else "length",
            n_prompt_tokens=len(tokens),
            n_decoded=len(generated),
            prompt_eval_ns=first - started,
            eval_ns=ended - first,
            context=tokens + generated,
        )


def _limit(opts: SamplingOptions, *, room: int) -> int:
    # num_predict: -1 (default) until the model stops, -2 fill the context
    if opts.num_predict is None or opts.num_predict < 0:
        return room
    return min(opts.num_predict, room)


def _pick(value: float | None, default: float) -> float:
    """The request's option, or Ollama's default for it."""
    return default if value is None else value


class LlamaEngine:
    name = "llama"

    def __init__(self, specs: list[ModelSpec], *, n_ctx: int, n_gpu_layers: int) -> None:
        self._specs = specs
        self._n_ctx = n_ctx
        self._n_gpu_layers = n_gpu_layers
        self._loaded: dict[str, _LoadedModel] = {}

    def models(self) -> list[ModelAdvert]:
        return [m.advert for m in self._loaded.values()]

    async def start(self) -> None:
        for spec in self._specs:
            started = time.perf_counter()
            self._loaded[spec.name] = await asyncio.to_thread(
                _LoadedModel, spec, n_ctx=self._n_ctx, n_gpu_layers=self._n_gpu_layers
            )
            log.info(
                "model_loaded", model=spec.name, seconds=round(time.perf_counter() - started, 2)
            )

    async def close(self) -> None:
        for model in self._loaded.values():
            await asyncio.to_thread(model.close)
        self._loaded.clear()

    async def generate(self, job: GenerateJob) -> AsyncIterator[EngineOutput]:
        model = self._loaded.get(job.model)
        if model is None:
            raise EngineFailure(f"model '{job.model}' is not loaded on this worker")
        work = _Work(job=job, loop=asyncio.get_running_loop(), out=asyncio.Queue())
        model.submit(work)
        try:
            while (item := await work.out.get()) is not _DONE:
                work.space.release()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Piece | Finish)
                yield item
        finally:
            work.cancel.set()
