"""Continuous batching: one thread owns a loaded model and decodes every running
sequence of it together: each step, one ``llama_decode`` for all of their next tokens
(and one more for a piece of prompt, when a sequence is still reading its own).

Each step:

1. Sequences whose client left (their outbox was cancelled) give their slot back; their
   KV cells are removed.
2. Waiting work is admitted into free slots. A generation takes the free slot whose
   cached tokens share the longest prefix with its prompt (a chat's next turn reuses its
   KV); only the rest of its prompt is evaluated.
3. One ``llama_decode`` of the last sampled token of every decoding sequence; each samples
   with its own sampler chain (its options, grammar and seed) and hands its text to the
   event loop.
4. One ``llama_decode`` of a piece of prompt of the sequences still reading theirs, within
   ``n_batch`` tokens (``PREFILL_BUDGET`` while others decode): a long prompt never
   stalls running streams for more than one piece. Pieces are sized so that the logits
   never depend on how a prompt was split (``MIN_PIECE``): with a seed, an answer is the
   same whether its prompt was cached, and whatever ran beside it. Of the sequences
   reading, the one with the least left goes first (pieces of one size only share a
   step): a short prompt admitted beside a long one waits one piece, not the whole long
   prompt; a long one passed over gains ``n_batch`` tokens of precedence per step it waits,
   so short prompts arriving without end never starve it.

A sequence whose reader lags (``outbox.HANDOFF_LIMIT`` items unread) sits out steps until it
catches up: the thread never blocks on one client. A failure of one sequence ends that
request alone; a failed decode fails the sequences in that batch. Embeddings take a slot
too and run alone between steps.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from shared.errors import EngineFailure, HerdError, Unavailable
from shared.messages import LoadedModel
from worker.engine import EngineOutput
from worker.llama.model import Runtime
from worker.llama.outbox import DONE, Outbox, post
from worker.llama.pieces import MIN_PIECE, piece_size
from worker.llama.sequence import Sequence

log = structlog.get_logger()

#: Prompt tokens per step while other sequences decode (the largest pause they see).
PREFILL_BUDGET = 256
UNLOADED = "the model was unloaded before the answer finished"


@dataclass(eq=False)
class _Slot:
    seq_id: int
    #: The tokens in this sequence's KV cells, in position order.
    cached: list[int] = field(default_factory=list)
    #: How many of them were read as prompt pieces (the rest were decoded one by one,
    #: or shifted): only those are reused, since they hold what a fresh read would.
    exact: int = 0
    #: When it was last given work (ties of prefix length go to the least recent).
    used: float = 0.0
    work: _Generation | None = None


@dataclass(eq=False)
class _Generation:
    seq: Sequence
    out: Outbox
    slot: _Slot | None = None
    #: Prompt tokens not yet in the KV cache.
    prefill: list[int] = field(default_factory=list)
    #: Batch row with this sequence's logits in the current step.
    row: int | None = None
    #: Whether it has tokens in the current step's batch.
    batched: bool = False
    #: Whether it holds one unit of its outbox's space for this step's output.
    reserved: bool = False
    #: Prefill steps that passed it over (its precedence grows with each).
    passed_over: int = 0


@dataclass(eq=False)
class _Task:
    """Other work that needs the model alone for a moment (embeddings): it gets a
    sequence id, runs between steps, and returns its slot at once."""

    run: Callable[[Runtime, int], None]
    out: Outbox


class Scheduler:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._slots = [_Slot(seq_id=i) for i in range(runtime.slots)]
        self._inbox: queue.Queue[_Generation | _Task | None] = queue.Queue()
        self._waiting: deque[_Generation | _Task] = deque()
        self._running: list[_Generation] = []
        self._lock = threading.Lock()
        self._busy = 0
        self._retiring = False
        self._wake = threading.Event()
        self._closed = threading.Event()
        #: Decode steps so far, and the most sequences one of them carried.
        self.steps = 0
        self.widest = 0
        self._thread = threading.Thread(
            target=self._run, name=f"llama:{runtime.desc.spec.name}", daemon=True
        )
        self._thread.start()

    # -- called from the event loop ---------------------------------------------------

    @property
    def busy(self) -> int:
        """Requests queued or running here."""
        return self._busy

    def status(self) -> LoadedModel:
        desc, runtime = self.runtime.desc, self.runtime
        size = desc.advert.size_bytes + desc.kv_bytes(runtime.n_ctx) * runtime.slots
        return LoadedModel(
            name=desc.spec.name,
            size_bytes=size,
            size_vram=size if runtime.on_gpu else 0,
            context_length=runtime.n_ctx,
            expires_at="",  # the residency policy knows when, not the engine
            busy=self._busy,
            slots=runtime.slots,
        )

    def generate(self, seq: Sequence, out: Outbox) -> None:
        self._submit(_Generation(seq=seq, out=out, prefill=list(seq.tokens)))

    def run_alone(self, run: Callable[[Runtime, int], None], out: Outbox) -> None:
        self._submit(_Task(run=run, out=out))

    def resume(self) -> None:
        """A reader took items: a sequence sitting out may go on."""
        self._wake.set()

    def retire(self, *, cancel: bool = False) -> None:
        """Free the model once the work submitted so far has run (``cancel``: stopped)."""
        self._inbox.put(None)
        if cancel:
            with self._lock:
                self._retiring = True
        self._wake.set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def _submit(self, work: _Generation | _Task) -> None:
        with self._lock:
            self._busy += 1
        self._inbox.put(work)
        self._wake.set()

    # -- the model's thread -----------------------------------------------------------

    def _run(self) -> None:
        closing = False
        try:
            while not (closing and not self._waiting and not self._running):
                closing = self._take_inbox(block=not (self._waiting or self._running)) or closing
                if self._retiring:
                    for work in [*self._waiting, *self._running]:
                        work.out.cancel.set()
                self._drop_cancelled()
                self._admit()
                stepped = bool(self._running) and self._step()
                post()
                if self._running and not stepped:
                    # every sequence waits for its reader: wait for one to catch up
                    self._wake.wait(0.05)
                    self._wake.clear()
        except Exception:
            log.exception("llama_scheduler_failed", model=self.runtime.desc.spec.name)
            for work in [*self._waiting, *self._running]:
                self._end(work, EngineFailure("the model's scheduler failed"))
        finally:
            for work in [*self._waiting, *self._running]:
                self._end(work, Unavailable(UNLOADED))
            post()
            self.runtime.close()
            self._closed.set()

    def _take_inbox(self, *, block: bool) -> bool:
        """Move submitted work to the waiting line; True once retired (no more comes)."""
        retired = False
        try:
            item = self._inbox.get(timeout=None) if block else self._inbox.get_nowait()
            while True:
                if item is None:
                    retired = True
                else:
                    self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass
        self._wake.clear()
        return retired

    def _drop_cancelled(self) -> None:
        # the reader is gone, or the model is being unloaded: then it hears why
        for work in [w for w in self._waiting if w.out.cancel.is_set()]:
            self._waiting.remove(work)
            self._end(work, Unavailable(UNLOADED))
        for gen in [g for g in self._running if g.out.cancel.is_set()]:
            self._release(gen, keep_cache=False)
            self._end(gen, Unavailable(UNLOADED))

    def _admit(self) -> None:
        while self._waiting:
            free = [s for s in self._slots if s.work is None]
            if not free:
                return
            work = self._waiting.popleft()
            if isinstance(work, _Task):
                self._run_task(work, min(free, key=lambda s: s.used))
                continue
            slot = self._choose(free, work.seq.tokens)
            self._place(work, slot)

    def _choose(self, free: list[_Slot], tokens: list[int]) -> _Slot:
        def score(slot: _Slot) -> tuple[int, float]:
            return _reusable(slot, tokens), -slot.used

        return max(free, key=score)

    def _place(self, gen: _Generation, slot: _Slot) -> None:
        tokens = gen.seq.tokens
        common = _reusable(slot, tokens)
        if common <= 0 or not self.runtime.forget(slot.seq_id, common, -1):
            self.runtime.forget(slot.seq_id)
            common = 0
        slot.cached = slot.cached[:common]
        slot.exact = common
        slot.used = time.monotonic()
        slot.work, gen.slot = gen, slot
        gen.prefill = tokens[common:]
        gen.seq.n_cached = common
        gen.seq.started_ns = time.perf_counter_ns()
        self._running.append(gen)

    def _run_task(self, task: _Task, slot: _Slot) -> None:
        self.runtime.forget(slot.seq_id)
        slot.cached, slot.exact = [], 0
        slot.used = time.monotonic()
        try:
            task.run(self.runtime, slot.seq_id)
        except HerdError as exc:
            task.out.put(exc)
        except Exception as exc:
            log.exception("llama_task_failed")
            task.out.put(EngineFailure(f"llama.cpp failed: {exc}"))
        finally:
            self.runtime.forget(slot.seq_id)
            self._end(task, None)

    def _step(self) -> bool:
        """One step: a decode of every sequence that can go on, then one piece of prompt
        (two ``llama_decode`` calls, so that llama.cpp never cuts a prompt piece around
        the decoding sequences' tokens). False when nothing could run."""
        for gen in self._running:
            gen.row, gen.batched = None, False
        decoded = self._decode()
        budget = self.runtime.n_batch
        if decoded:
            budget = min(budget, PREFILL_BUDGET)
        return self._prefill(budget) or decoded

    def _decode(self) -> bool:
        runtime = self.runtime
        runtime.clear_batch()
        for gen in [g for g in self._running if g.seq.next_token is not None]:
            if not gen.out.space.acquire(blocking=False):
                continue  # its reader lags: it sits this step out
            gen.reserved = True
            assert gen.slot is not None and gen.seq.next_token is not None
            if len(gen.slot.cached) >= runtime.n_ctx and not self._make_room(gen):
                continue
            if gen.prefill:  # the shift could not move cells: the tail is evaluated again
                continue
            token = gen.seq.next_token
            gen.row = runtime.add(token, len(gen.slot.cached), gen.slot.seq_id, True)
            gen.slot.cached.append(token)
            gen.batched = True
        return self._run_batch()

    def _prefill(self, budget: int) -> bool:
        """A piece of prompt of the sequences that are reading one; pieces of one size
        only (llama.cpp splits a batch into equal shares per sequence: an unequal mix
        would cut a piece into sizes that round differently)."""
        runtime = self.runtime
        runtime.clear_batch()
        size = 0
        reading = [g for g in self._running if g.prefill]
        reading.sort(key=lambda g: len(g.prefill) - g.passed_over * runtime.n_batch)
        for gen in reading:
            share = piece_size(len(gen.prefill), budget)
            if size and (share != size or share > budget):
                gen.passed_over += 1
                continue
            gen.passed_over = 0
            size = share
            slot = gen.slot
            assert slot is not None
            chunk, gen.prefill = gen.prefill[:share], gen.prefill[share:]
            budget -= len(chunk)
            gen.batched = True
            whole = slot.exact == len(slot.cached)
            for index, token in enumerate(chunk):
                last = not gen.prefill and index == len(chunk) - 1
                row = runtime.add(token, len(slot.cached), slot.seq_id, last)
                slot.cached.append(token)
                if last:
                    gen.row = row
            if whole:
                slot.exact = len(slot.cached)
        return self._run_batch()

    def _run_batch(self) -> bool:
        """Decode the batch built, then let each sequence with logits sample."""
        if self.runtime.batch.n_tokens == 0:
            return False
        self.steps += 1
        self.widest = max(self.widest, sum(1 for g in self._running if g.row is not None))
        try:
            self.runtime.decode()
        except EngineFailure as exc:
            for gen in [g for g in self._running if g.batched]:
                self._release(gen, keep_cache=False)
                self._end(gen, exc)
            return True
        for gen in [g for g in self._running if g.row is not None]:
            self._advance(gen)
        return True

    def _advance(self, gen: _Generation) -> None:
        assert gen.row is not None
        row, gen.row = gen.row, None
        try:
            outputs = gen.seq.advance(row)
        except HerdError as exc:
            self._release(gen, keep_cache=False)
            self._end(gen, exc)
            return
        except Exception as exc:
            log.exception("generation_failed")
            self._release(gen, keep_cache=False)
            self._end(gen, EngineFailure(f"generation failed: {exc}"))
            return
        self._send(gen, outputs)

    def _send(self, gen: _Generation, outputs: list[EngineOutput]) -> None:
        if not outputs and gen.reserved:
            gen.out.space.release()
        gen.reserved = False
        for item in outputs:
            gen.out.put(item)
        if gen.seq.done:
            self._release(gen, keep_cache=True)
            self._end(gen, None)

    def _make_room(self, gen: _Generation) -> bool:
        """Context shift for a sequence whose cells are full: forget half of what follows
        its first ``keep`` tokens. False (and the answer ended) when it may not."""
        seq, slot, runtime = gen.seq, gen.slot, self.runtime
        assert slot is not None
        n_past, keep = len(slot.cached), seq.keep
        discard = (n_past - keep) // 2
        if not seq.may_shift() or discard <= 0:
            self._send(gen, seq.cut_short())
            return False
        if runtime.can_shift() and runtime.forget(slot.seq_id, keep, keep + discard):
            runtime.shift(slot.seq_id, keep + discard, n_past, -discard)
            slot.cached = slot.cached[:keep] + slot.cached[keep + discard :]
            slot.exact = min(slot.exact, keep)
            return True
        # a cache that cannot move positions (recurrent models): evaluate the kept tail
        # again, then the sampled token; its logits give the next one
        assert seq.next_token is not None
        tail = slot.cached[keep + discard :]
        runtime.forget(slot.seq_id, keep, -1)
        slot.cached = slot.cached[:keep]
        slot.exact = min(slot.exact, keep)
        gen.prefill = [*tail, seq.next_token]
        seq.next_token = None
        if gen.reserved:
            gen.out.space.release()
            gen.reserved = False
        return True

    def _release(self, gen: _Generation, *, keep_cache: bool) -> None:
        """Give the slot back; its KV stays as a prefix cache unless ``keep_cache`` is off."""
        gen.seq.close()
        if gen in self._running:
            self._running.remove(gen)
        slot, gen.slot = gen.slot, None
        if slot is None:
            return
        slot.work = None
        if not keep_cache:
            self.runtime.forget(slot.seq_id)
            slot.cached, slot.exact = [], 0

    def _end(self, work: _Generation | _Task, error: BaseException | None) -> None:
        if isinstance(work, _Generation):
            work.seq.close()
            if work in self._running:
                self._release(work, keep_cache=False)
        if error is not None:
            work.out.put(error)
        work.out.put(DONE)
        with self._lock:
            self._busy -= 1


def _reusable(slot: _Slot, tokens: list[int]) -> int:
    """Prompt tokens ``slot``'s cache can stand for: its exactly read prefix in common
    with ``tokens``, leaving at least ``MIN_PIECE`` (or one) to read for fresh logits."""
    common = min(_common_prefix(slot.cached, tokens), slot.exact)
    tail = MIN_PIECE if len(tokens) > MIN_PIECE else 1
    return max(0, min(common, len(tokens) - tail))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
