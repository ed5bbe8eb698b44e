"""Sampling for one generation: Ollama's options as a llama.cpp sampler chain, and
log-probabilities read from the logits llama.cpp keeps for the last decoded position.

The chain is built from llama.cpp's sampler API directly (not ``Llama._init_sampler``) so
that ``repeat_last_n`` is honoured per request (``Llama`` fixes it at load) and the
repeat-penalty window starts with the prompt's last tokens, as llama.cpp's server does.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp
import numpy as np

from shared.errors import EngineFailure, InvalidRequest
from shared.messages import Logprob, SamplingOptions, TopLogprob
from worker.llama.grammar import GRAMMAR_REFUSED
from worker.llama.model import Runtime

#: Ollama's ``api.DefaultOptions`` for the runtime options.
DEFAULTS = SamplingOptions(
    temperature=0.8,
    top_k=40,
    top_p=0.9,
    min_p=0.0,
    typical_p=1.0,
    seed=-1,
    num_predict=-1,
    num_keep=4,
    repeat_penalty=1.0,
    repeat_last_n=64,
    presence_penalty=0.0,
    frequency_penalty=0.0,
)


def resolve(request: SamplingOptions, model: dict[str, list[Any]]) -> SamplingOptions:
    """Ollama's layering: defaults, then the model's parameters, then the request's."""
    values = DEFAULTS.model_dump()
    for name, given in model.items():
        if name in values and given:
            values[name] = given if name == "stop" else given[0]
    values.update(request.model_dump(exclude_none=True))
    return SamplingOptions.model_validate(values)


#: Tokens the grammar checks before it is given the whole vocabulary.
SHORTLIST = 512


class Sampler:
    """A llama.cpp sampler chain; ``sample`` picks (and accepts) the next token.

    A grammar is not part of the chain: masking a 262k-token vocabulary costs ~100 ms a
    token. As llama.cpp's own ``common_sampler`` does, the token is sampled freely and
    checked against the grammar alone. A rejected token makes the grammar mask the
    ``SHORTLIST`` likeliest tokens and the chain sample among those allowed; that is what
    masking everything would give whenever at least ``top_k`` of them are allowed (else
    the whole vocabulary is masked). Without ``top_k`` the tail past the shortlist is left
    out, which only drops tokens of negligible probability.
    """

    def __init__(
        self,
        runtime: Runtime,
        opts: SamplingOptions,
        *,
        grammar: str | None,
        history: Sequence[int],
    ) -> None:
        self._ctx, self._n_vocab = runtime.ctx, runtime.n_vocab
        self._chain = _chain(runtime, opts, history)
        self._grammar = None
        if grammar is not None:
            self._grammar = llama_cpp.llama_sampler_init_grammar(
                runtime.vocab, grammar.encode(), b"root"
            )
            if not self._grammar:  # the schema's: "json" always loads
                self.close()
                raise InvalidRequest(GRAMMAR_REFUSED)
            self._data = (llama_cpp.llama_token_data * self._n_vocab)()
            self._view = np.ctypeslib.as_array(self._data)
            self._ids = np.arange(self._n_vocab, dtype=np.int32)
            self._one = (llama_cpp.llama_token_data * 1)()
            greedy = opts.temperature is not None and opts.temperature <= 0
            self._need = 1 if greedy or not opts.top_k or opts.top_k <= 0 else opts.top_k

    def sample(self, row: int) -> int:
        """The next token from the logits of batch row ``row``."""
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self._chain, self._ctx, row))
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self._ctx, row), shape=(self._n_vocab,)
        )
        token = self._draw(self._fill(logits, self._ids))
        if not self._allowed(token):
            # the grammar masks the likeliest tokens first; the whole vocabulary only when
            # too few of them are allowed for the chain's top_k
            candidates = None
            if self._n_vocab > SHORTLIST:
                best = np.argpartition(-logits, SHORTLIST - 1)[:SHORTLIST]
                candidates = self._fill(logits, best)
            if candidates is None or self._mask(candidates) < self._need:
                candidates = self._fill(logits, self._ids)
                if self._mask(candidates) == 0:
                    raise EngineFailure("no token satisfies the requested format")
            token = self._draw(candidates)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _fill(self, logits: Any, ids: Any) -> llama_cpp.llama_token_data_array:
        view = self._view[: len(ids)]
        view["id"] = ids
        view["logit"] = logits if len(ids) == self._n_vocab else logits[ids]
        view["p"] = 0.0
        return llama_cpp.llama_token_data_array(
            data=self._data, size=len(ids), selected=-1, sorted=False
        )

    def _mask(self, candidates: llama_cpp.llama_token_data_array) -> int:
        """Let the grammar rule out candidates; how many are left."""
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        return int(np.isfinite(self._view["logit"][: candidates.size]).sum())

    def _draw(self, candidates: llama_cpp.llama_token_data_array) -> int:
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(candidates))
        if candidates.selected < 0:
            raise EngineFailure("no token satisfies the requested format")
        return int(candidates.data[candidates.selected].id)

    def _allowed(self, token: int) -> bool:
        entry = self._one[0]
        entry.id, entry.logit, entry.p = token, 0.0, 0.0  # type: ignore[assignment]
        single = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(single))
        return bool(np.isfinite(self._one[0].logit))

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


def _chain(runtime: Runtime, opts: SamplingOptions, history: Sequence[int]) -> Any:
    """Penalties, then truncation (top_k, typical, top_p, min_p), temperature, a seeded draw;
    llama.cpp's order. Temperature 0 is greedy."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add
    repeat = opts.repeat_penalty or 1.0
    presence, frequency = opts.presence_penalty or 0.0, opts.frequency_penalty or 0.0
    # llama.cpp sizes the penalty's ring buffer by the window (2^31-1 would ask ~8 GiB):
    # -1 is the context, as in Ollama, and no window is longer than the context
    last_n = runtime.n_ctx if opts.repeat_last_n == -1 else max(0, opts.repeat_last_n or 0)
    last_n = min(last_n, runtime.n_ctx)
    if last_n and (repeat != 1.0 or presence or frequency):
        penalties = llama_cpp.llama_sampler_init_penalties(
            runtime.n_vocab, last_n, repeat, frequency, presence
        )
        for token in history[-last_n:]:
            llama_cpp.llama_sampler_accept(penalties, token)
        add(chain, penalties)
    temperature = opts.temperature if opts.temperature is not None else 0.8
    if temperature <= 0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    if opts.top_k and opts.top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(opts.top_k))
    if opts.typical_p is not None and 0 < opts.typical_p < 1:
        add(chain, llama_cpp.llama_sampler_init_typical(opts.typical_p, 1))
    if opts.top_p is not None and 0 < opts.top_p < 1:
        add(chain, llama_cpp.llama_sampler_init_top_p(opts.top_p, 1))
    if opts.min_p:
        add(chain, llama_cpp.llama_sampler_init_min_p(opts.min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(temperature))
    # a negative seed (Ollama's default -1) means random: LLAMA_DEFAULT_SEED asks for that
    seed = llama_cpp.LLAMA_DEFAULT_SEED
    if opts.seed is not None and opts.seed >= 0:
        seed = opts.seed & 0xFFFFFFFF
    add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain


def logprob(
    runtime: Runtime, row: int, token: int, top: int, piece: Callable[[int], bytes]
) -> Logprob:
    """The chosen token's log-probability and the ``top`` likeliest alternatives, from
    the model's distribution at batch row ``row`` (log-softmax of the raw logits, before
    any sampler)."""
    pointer = llama_cpp.llama_get_logits_ith(runtime.ctx, row)
    logits = np.ctypeslib.as_array(pointer, shape=(runtime.n_vocab,)).astype(np.float64)
    peak = logits.max()
    log_total = peak + np.log(np.exp(logits - peak).sum())
    alternatives: list[TopLogprob] | None = None
    if top > 0:
        best = np.argpartition(-logits, min(top, logits.size - 1))[:top]
        best = best[np.argsort(-logits[best], kind="stable")]
        alternatives = [_entry(int(t), float(logits[t] - log_total), piece) for t in best]
    chosen = _entry(token, float(logits[token] - log_total), piece)
    return Logprob(**chosen.model_dump(), top_logprobs=alternatives)


def _entry(token: int, value: float, piece: Callable[[int], bytes]) -> TopLogprob:
    raw = piece(token)
    return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=value, bytes=list(raw))
