"""One generation as the batch scheduler steps it: its prompt, sampler and text so far.

A ``Sequence`` is built off the model's thread (templates, tokenizing, the grammar), then
only the scheduler's thread touches it. Each step the scheduler feeds it into the batch
(a chunk of its prompt, or the token it sampled last) and, when its row has logits,
``advance`` samples the next token and says what to send.

- ``num_predict``: -1 (or 0, as in Ollama's runner) runs until the model stops, -2 until
  the context is full; any answer is bounded at 10 x num_ctx tokens (as Ollama's
  llama-server runner bounds an unlimited one).
- When the context fills up, ``shift`` (default on) drops half of the tokens after the
  first ``num_keep`` and carries on, as Ollama does; ``shift: false`` ends the answer there
  with done_reason "length".
- With ``format`` on a model that is thinking, the grammar starts after ``</think>``:
  the reasoning itself is free text, as in Ollama.
- A continuation (``job.resume``: the answer's tokens a dead worker generated) feeds them
  after the prompt one per step, as they were decoded (not read as a prompt piece: a
  batched read gives the cache other rounding, and a greedy answer could part ways a few
  tokens on), counts them as generated and replays their text through the stop-string
  filter, so it goes on where that worker was. Each piece carries the ids generated since
  the one before, for the next worker that may have to go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from shared import thinking
from shared.errors import EngineFailure
from shared.messages import GenerateJob, Logprob, SamplingOptions
from worker.engine import EngineOutput, Finish, Piece
from worker.llama.grammar import grammar_for
from worker.llama.model import Runtime
from worker.llama.prompt import Vocab, build, never
from worker.llama.sampling import Sampler, logprob, resolve
from worker.modelinfo import Description
from worker.textstream import TextStream

THINK_END = "</think>"
#: An answer is at most this many contexts long, whatever ``num_predict`` says.
MAX_PREDICT_PER_CTX = 10


class Sequence:
    def __init__(
        self,
        runtime: Runtime,
        vocab: Vocab,
        job: GenerateJob,
        cancelled: Callable[[], bool] = never,
    ) -> None:
        """``cancelled``: read while the prompt is built (a long chat's truncation)."""
        desc: Description = runtime.desc
        self.job = job
        self._runtime, self._vocab = runtime, vocab
        self.opts = opts = resolve(job.options, desc.parameters)
        n_ctx = runtime.n_ctx
        num_keep = opts.num_keep if opts.num_keep is not None else 4
        prompt = build(job, desc, vocab, n_ctx, num_keep if num_keep >= 0 else n_ctx, cancelled)
        resume = list(job.resume or [])
        self.tokens = prompt.tokens
        self.n_prompt = len(prompt.tokens)
        if resume and self.n_prompt + len(resume) >= n_ctx:  # the dead worker had shifted
            raise EngineFailure("cannot go on with the answer: it no longer fits the context")
        #: A continuation's tokens still to feed, one per step, before sampling resumes.
        self._replay = list(resume)
        #: Tokens a context shift keeps at the start.
        self.keep = min(len(self.tokens) if num_keep < 0 else max(num_keep, 1), n_ctx // 2)
        self._grammar = grammar_for(job.format)
        # a thinking model reasons freely first; the grammar applies from </think> on
        capable = "thinking" in desc.template.capabilities
        self._deferred = self._grammar is not None and thinking.enabled(job.think, capable=capable)
        self._sampler: Sampler | None = Sampler(
            runtime,
            opts,
            grammar=None if self._deferred else self._grammar,
            history=self.tokens + resume,
        )
        self._stream = TextStream([*prompt.stops, *(opts.stop or [])])
        for token in resume:  # sent already: what they leave held back is still to come
            self._stream.feed(vocab.piece(token))
        self.generated: list[int] = resume
        #: Generated since the last piece went out.
        self._unsent: list[int] = []
        self._pending: list[Logprob] = []
        # the template may open the reasoning itself (the prompt ends with <think>): the
        # first piece says so, for the postprocessor
        tail = b"".join(vocab.piece(t, True) for t in prompt.tokens[-4:]).decode(errors="ignore")
        self._opened = tail.rstrip().endswith("<think>")
        self._text = "<think>" if self._opened else ""
        self.limit = _limit(opts, n_ctx)
        # set by the scheduler
        self.started_ns = 0
        self.first_ns = 0
        #: Prompt tokens its slot's cache already held.
        self.n_cached = 0
        #: The token sampled last, to be decoded next step (None while prefilling).
        self.next_token: int | None = None
        self.done = False

    def advance(self, row: int) -> list[EngineOutput]:
        """Sample from batch row ``row``; what to send (a ``Finish`` last when done)."""
        assert self._sampler is not None
        if self._replay:  # a continuation: decoded already, the client has its text
            self.next_token = self._replay.pop(0)
            return []
        if not self.first_ns:
            self.first_ns = time.perf_counter_ns()
        token = self._sampler.sample(row)
        if self._vocab.is_end(token):
            return self._finish("stop")
        if self.job.logprobs:
            self._pending.append(
                logprob(self._runtime, row, token, self.job.top_logprobs, self._vocab.piece)
            )
        self.generated.append(token)
        self._unsent.append(token)
        piece = self._stream.feed(self._vocab.piece(token))
        out: list[EngineOutput] = []
        if piece or (self._pending and self._stream.stopped):
            out.append(self._piece(piece))
        if self._stream.stopped:
            return out + self._finish("stop")
        if self._deferred:
            self._text += piece
            if _thinking_over(self._text):
                self._sampler.close()
                self._sampler = Sampler(
                    self._runtime,
                    self.opts,
                    grammar=self._grammar,
                    history=self.tokens + self.generated,
                )
                self._deferred = False
        if len(self.generated) >= self.limit:
            return out + self._finish("length")
        self.next_token = token
        return out

    def may_shift(self) -> bool:
        """Whether a full context may drop tokens and go on (else the answer ends)."""
        return self.job.shift is not False and self.opts.num_predict != -2

    def cut_short(self) -> list[EngineOutput]:
        """The context is full and may not shift: end the answer here."""
        return self._finish("length")

    def _finish(self, reason: Literal["stop", "length"]) -> list[EngineOutput]:
        self.done = True
        self.next_token = None
        out: list[EngineOutput] = []
        rest = self._stream.finish()
        if rest or self._pending:
            out.append(self._piece(rest))
        ended = time.perf_counter_ns()
        first = self.first_ns or ended
        out.append(
            Finish(
                done_reason=reason,
                n_prompt_tokens=self.n_prompt,
                n_decoded=len(self.generated),
                prompt_eval_ns=max(1, first - self.started_ns),
                eval_ns=max(1, ended - first),
                context=None if self.job.raw else self.tokens + self.generated,
                n_cached=self.n_cached,
            )
        )
        return out

    def _piece(self, text: str) -> Piece:
        """A piece with the logprobs pending; the first one says whether thinking opened."""
        piece = Piece(
            text, self._pending or None, thinking_opened=self._opened, tokens=tuple(self._unsent)
        )
        self._pending, self._opened, self._unsent = [], False, []
        return piece

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None


def _thinking_over(text: str) -> bool:
    stripped = text.lstrip()
    if not stripped:
        return False
    # still (or about to be) thinking while the text is "<think>..." without its end
    return not ("<think>".startswith(stripped[:7]) and THINK_END not in stripped)


def _limit(opts: SamplingOptions, n_ctx: int) -> int:
    """Tokens to generate at most: ``num_predict``, never more than 10 x num_ctx (the bound
    Ollama's llama-server runner puts on an unlimited answer: one that shifts its context
    forever would hold its slot for good)."""
    if opts.num_predict == -2:  # fill the context
        return n_ctx
    if opts.num_predict is None or opts.num_predict <= 0:  # Ollama: 0 and -1 mean no limit
        return MAX_PREDICT_PER_CTX * n_ctx
    return min(opts.num_predict, MAX_PREDICT_PER_CTX * n_ctx)
