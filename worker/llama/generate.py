"""One generation on a loaded model, run on the model's own thread.

- The KV cache keeps the previous job's tokens; only the part of the new prompt after the
  longest common prefix is evaluated.
- ``num_predict``: -1 (or 0, as in Ollama's runner) runs until the model stops (bounded at
  10 x num_ctx, as Ollama's llama-server runner does), -2 until the context is full.
- When the context fills up, ``shift`` (default on) drops half of the tokens after the
  first ``num_keep`` and carries on, as Ollama does; ``shift: false`` ends the answer there
  with done_reason "length".
- With ``format`` on a model that is thinking, the grammar starts after ``</think>``:
  the reasoning itself is free text, as in Ollama.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Literal

import llama_cpp
import numpy as np

from shared.errors import EngineFailure
from shared.messages import GenerateJob, Logprob, SamplingOptions
from worker.engine import EngineOutput, Finish, Piece
from worker.llama.grammar import grammar_for
from worker.llama.prompt import Vocab, build
from worker.llama.sampling import Sampler, logprob, resolve
from worker.modelinfo import Description
from worker.templates import thinking_enabled
from worker.textstream import TextStream

THINK_END = "</think>"


def generate(
    llm: llama_cpp.Llama,
    desc: Description,
    vocab: Vocab,
    job: GenerateJob,
    cancel: threading.Event,
) -> Iterator[EngineOutput]:
    started = time.perf_counter_ns()
    opts = resolve(job.options, desc.parameters)
    n_ctx = llm.n_ctx()
    num_keep = opts.num_keep if opts.num_keep is not None else 4
    prompt = build(job, desc, vocab, n_ctx, num_keep if num_keep >= 0 else n_ctx)
    tokens = prompt.tokens
    keep = min(len(tokens) if num_keep < 0 else max(num_keep, 1), n_ctx // 2)
    grammar = grammar_for(job.format)
    # a thinking model reasons freely first; the grammar applies from </think> on
    deferred = (
        grammar is not None
        and "thinking" in desc.template.capabilities
        and thinking_enabled(job.think)
    )
    sampler = Sampler(llm, opts, grammar=None if deferred else grammar, history=tokens)
    try:
        if not _prefill(llm, tokens, cancel):
            return
        first = time.perf_counter_ns()
        stream = TextStream([*prompt.stops, *(opts.stop or [])])
        generated: list[int] = []
        pending: list[Logprob] = []
        # the template may open the reasoning itself (the prompt ends with <think>)
        tail = b"".join(vocab.piece(t, True) for t in tokens[-4:]).decode(errors="ignore")
        text = "<think>" if tail.rstrip().endswith("<think>") else ""
        reason: Literal["stop", "length"] = "length"
        limit = _limit(opts, n_ctx)
        while len(generated) < limit:
            if cancel.is_set():
                return
            token = sampler.sample()
            if vocab.is_end(token):
                reason = "stop"
                break
            if job.logprobs:
                pending.append(logprob(llm, token, job.top_logprobs, vocab.piece))
            generated.append(token)
            piece = stream.feed(vocab.piece(token))
            if piece or (pending and stream.stopped):
                yield Piece(piece, pending or None)
                pending = []
            if stream.stopped:
                reason = "stop"
                break
            if deferred:
                text += piece
                if _thinking_over(text):
                    sampler.close()
                    history = tokens + generated
                    sampler = Sampler(llm, opts, grammar=grammar, history=history)
                    deferred = False
            if len(generated) >= limit:
                break
            if llm.n_tokens >= n_ctx and not _make_room(llm, job, opts, keep):
                break
            _eval(llm, [token])
        rest = stream.finish()
        if rest or pending:
            yield Piece(rest, pending or None)
        ended = time.perf_counter_ns()
        yield Finish(
            done_reason=reason,
            n_prompt_tokens=len(tokens),
            n_decoded=len(generated),
            prompt_eval_ns=max(1, first - started),
            eval_ns=max(1, ended - first),
            context=None if job.raw else tokens + generated,
        )
    finally:
        sampler.close()


def _thinking_over(text: str) -> bool:
    stripped = text.lstrip()
    if not stripped:
        return False
    # still (or about to be) thinking while the text is "<think>..." without its end
    return not ("<think>".startswith(stripped[:7]) and THINK_END not in stripped)


def _limit(opts: SamplingOptions, n_ctx: int) -> int:
    if opts.num_predict == -2:  # fill the context
        return n_ctx
    if opts.num_predict is None or opts.num_predict <= 0:  # Ollama: 0 and -1 mean no limit
        return 10 * n_ctx
    return opts.num_predict


def _eval(llm: llama_cpp.Llama, tokens: list[int]) -> None:
    try:
        llm.eval(tokens)
    except RuntimeError as exc:  # llama_decode's return codes
        raise EngineFailure(f"llama.cpp failed to evaluate the prompt: {exc}") from exc


def _prefill(llm: llama_cpp.Llama, tokens: list[int], cancel: threading.Event) -> bool:
    """Evaluate ``tokens``, reusing the KV cache's longest common prefix with them; False
    when cancelled meanwhile (checked between batches)."""
    cached = llm.input_ids[: min(llm.n_tokens, len(tokens))]
    differs = np.flatnonzero(cached != np.asarray(tokens[: cached.size], dtype=cached.dtype))
    common = int(differs[0]) if differs.size else cached.size
    # at least one token is evaluated, for fresh logits
    common = min(common, len(tokens) - 1)
    if common > 0 and llm._ctx.kv_cache_seq_rm(0, common, -1):
        llm.n_tokens = common
    else:
        llm.reset()  # type: ignore[no-untyped-call]
        common = 0
    for start in range(common, len(tokens), llm.n_batch):
        if cancel.is_set():
            return False
        _eval(llm, tokens[start : start + llm.n_batch])
    return True


def _make_room(llm: llama_cpp.Llama, job: GenerateJob, opts: SamplingOptions, keep: int) -> bool:
    """Context shift: forget half of what follows the first ``keep`` tokens."""
    if job.shift is False or opts.num_predict == -2:
        return False
    n_past = llm.n_tokens
    discard = (n_past - keep) // 2
    if discard <= 0:
        return False
    memory = llama_cpp.llama_get_memory(llm.ctx)
    ids = llm.input_ids
    if llama_cpp.llama_memory_can_shift(memory) and llm._ctx.kv_cache_seq_rm(
        0, keep, keep + discard
    ):
        llm._ctx.kv_cache_seq_shift(0, keep + discard, n_past, -discard)
        ids[keep : n_past - discard] = ids[keep + discard : n_past].copy()
        llm.n_tokens = n_past - discard
        return True
    # a cache that cannot move positions (recurrent models): evaluate the kept tail again
    tail = ids[keep + discard : n_past].tolist()
    llm.n_tokens = keep
    _eval(llm, tail)
    return True
