"""Embeddings on a loaded model, run on the model's own thread.

- An embedding model (its GGUF has ``{arch}.pooling_type``) is loaded with
  ``embedding=True``; each input is one batch and llama.cpp pools it as the model says.
- A causal model (gemma3) has no pooling: the vector is the hidden state of the input's
  last token, as Ollama's llama runner returns for such models. Its context is shared with
  generation, so no second model or KV cache is allocated: the input's tokens but the last
  are evaluated as usual, then embeddings are switched on for the last token only (llama.cpp
  outputs every token of a batch in embedding mode, and gemma's 262k-entry logits for a
  whole batch would cost hundreds of MB).
"""

from __future__ import annotations

import llama_cpp
import numpy as np

from shared.errors import EngineFailure, InvalidRequest
from shared.messages import GenerateJob
from worker.engine import Embeddings
from worker.llama.prompt import Vocab

TOO_LONG = "the input length exceeds the context length"


def embed(
    llm: llama_cpp.Llama, vocab: Vocab, job: GenerateJob, *, pooled: bool, trained: int
) -> Embeddings:
    # llama.cpp pads a context to 256 cells; a BERT has no positions past its trained size
    limit = llm.n_ctx() if not pooled else min(llm.n_ctx(), llm.n_batch, trained or llm.n_ctx())
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
        try:
            vector = _pooled(llm, tokens) if pooled else _last_token(llm, tokens)
        except RuntimeError as exc:
            raise EngineFailure(f"llama.cpp failed to embed the input: {exc}") from exc
        vectors.append(vector)
    return Embeddings(vectors=vectors, n_prompt_tokens=total)


def _last_token(llm: llama_cpp.Llama, tokens: list[int]) -> list[float]:
    llm.reset()  # type: ignore[no-untyped-call]
    if len(tokens) > 1:
        llm.eval(tokens[:-1])
    llama_cpp.llama_set_embeddings(llm.ctx, True)
    try:
        llm.eval(tokens[-1:])
        pointer = llama_cpp.llama_get_embeddings_ith(llm.ctx, -1)
        if not pointer:
            raise EngineFailure("llama.cpp returned no embedding")
        return _vector(pointer, llm.n_embd())
    finally:
        llama_cpp.llama_set_embeddings(llm.ctx, False)


def _pooled(llm: llama_cpp.Llama, tokens: list[int]) -> list[float]:
    llm.reset()  # type: ignore[no-untyped-call]
    llm._ctx.kv_cache_clear()  # type: ignore[no-untyped-call]
    batch = llm._batch
    batch.reset()  # type: ignore[no-untyped-call]
    batch.add_sequence(tokens, 0, True)
    llm._ctx.decode(batch)
    batch.reset()  # type: ignore[no-untyped-call]
    pointer = llama_cpp.llama_get_embeddings_seq(llm.ctx, 0)
    if not pointer:
        pointer = llama_cpp.llama_get_embeddings_ith(llm.ctx, -1)
    if not pointer:
        raise EngineFailure("llama.cpp returned no embedding")
    return _vector(pointer, llm.n_embd())


def _vector(pointer: object, size: int) -> list[float]:
    values: list[float] = np.ctypeslib.as_array(pointer, shape=(size,)).tolist()
    return values
