"""Embeddings on a loaded model, run on the model's thread in a slot of its own.

- An embedding model (its GGUF has ``{arch}.pooling_type``) is loaded with embeddings on;
  each input is one batch and llama.cpp pools it as the model says.
- A causal model (gemma3) has no pooling: the vector is the hidden state of the input's
  last token, as Ollama's llama runner returns for such models. Its context is shared with
  generation, so no second model or KV cache is allocated: the input's tokens but the last
  are evaluated as usual, then embeddings are switched on for the last token only (llama.cpp
  outputs every token of a batch in embedding mode, and gemma's 262k-entry logits for a
  whole batch would cost hundreds of MB). Other sequences wait meanwhile: embeddings need
  the context alone.
"""

from __future__ import annotations

import llama_cpp
import numpy as np

from shared.errors import EngineFailure, InvalidRequest
from shared.messages import GenerateJob
from worker.engine import Embeddings
from worker.llama.model import Runtime
from worker.llama.prompt import Vocab

TOO_LONG = "the input length exceeds the context length"


def embed(runtime: Runtime, seq: int, vocab: Vocab, job: GenerateJob) -> Embeddings:
    desc = runtime.desc
    pooled, trained = desc.embedding_only, desc.trained_context
    # llama.cpp pads a context to 256 cells; a BERT has no positions past its trained size
    limit = runtime.n_ctx
    if pooled:
        limit = min(limit, runtime.n_batch, trained or limit)
    vectors: list[list[float]] = []
    total = 0
    for text in job.inputs:
        tokens = vocab.tokenize(text, bos=True)
        if len(tokens) > limit:
            if job.truncate is False:
                raise InvalidRequest(TOO_LONG)
            tokens = tokens[:limit]
        if not tokens:
            raise InvalidRequest("cannot embed an empty input")
        total += len(tokens)
        runtime.forget(seq)
        vector = _pooled(runtime, seq, tokens) if pooled else _last_token(runtime, seq, tokens)
        vectors.append(vector)
    return Embeddings(vectors=vectors, n_prompt_tokens=total)


def _evaluate(runtime: Runtime, seq: int, tokens: list[int], start: int, outputs: bool) -> int:
    """Evaluate ``tokens`` from position ``start`` in batches; the last row is returned."""
    row = -1
    for begin in range(0, len(tokens), runtime.n_batch):
        runtime.clear_batch()
        for offset, token in enumerate(tokens[begin : begin + runtime.n_batch]):
            row = runtime.add(token, start + begin + offset, seq, outputs)
        runtime.decode()
    return row


def _last_token(runtime: Runtime, seq: int, tokens: list[int]) -> list[float]:
    if len(tokens) > 1:
        _evaluate(runtime, seq, tokens[:-1], 0, False)
    llama_cpp.llama_set_embeddings(runtime.ctx, True)
    try:
        row = _evaluate(runtime, seq, tokens[-1:], len(tokens) - 1, True)
        pointer = llama_cpp.llama_get_embeddings_ith(runtime.ctx, row)
        if not pointer:
            raise EngineFailure("llama.cpp returned no embedding")
        return _vector(pointer, runtime.n_embd)
    finally:
        llama_cpp.llama_set_embeddings(runtime.ctx, False)


def _pooled(runtime: Runtime, seq: int, tokens: list[int]) -> list[float]:
    row = _evaluate(runtime, seq, tokens, 0, True)
    pointer = llama_cpp.llama_get_embeddings_seq(runtime.ctx, seq)
    if not pointer:
        pointer = llama_cpp.llama_get_embeddings_ith(runtime.ctx, row)
    if not pointer:
        raise EngineFailure("llama.cpp returned no embedding")
    return _vector(pointer, runtime.n_embd)


def _vector(pointer: object, size: int) -> list[float]:
    values: list[float] = np.ctypeslib.as_array(pointer, shape=(size,)).tolist()
    return values
