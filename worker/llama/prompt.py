"""A job's prompt as tokens: templates, raw mode, fill-in-the-middle, ``context``, and
fitting it into the context window (``truncate``).

Ollama's rules: a chat too long for the context loses its oldest non-system messages
(the last message always stays); whatever is still too long keeps its first ``num_keep``
tokens and its end. ``truncate: false`` (or ``shift: false``) refuses instead.

Which messages go is searched from the end (1, 2, 4... kept, then halving the gap): a few
renders of what is kept, not one per message dropped (quadratic: 1,000 messages took 14 s),
and the ``cancelled`` flag is read between renders. ``context`` ids must be tokens of the
vocabulary (a 400 otherwise, never an id handed to llama.cpp).
"""

from __future__ import annotations

import bisect
import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp
from llama_cpp import _internals

from shared.errors import BAD_CONTEXT_TOKEN, Cancelled, InvalidRequest
from shared.messages import ChatMessage, GenerateJob
from worker.modelinfo import Description
from worker.prompts.go_execute import GoTemplate
from worker.prompts.template import ChatTemplate, Rendered, job_messages

TOO_LONG = "the prompt is longer than the context length currently available to the model"


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    #: Strings that end the answer (the template's; the request's are added later).
    stops: list[str]


class Vocab:
    """Tokenizing and token pieces of one loaded model."""

    def __init__(self, model: _internals.LlamaModel) -> None:
        self._model = model
        self._vocab = model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._pieces: dict[tuple[int, bool], bytes] = {}

    def check(self, tokens: list[int]) -> None:
        """Refuse token ids outside the vocabulary (a request's ``context``)."""
        for token in tokens:
            if not 0 <= token < self.n_vocab:
                raise InvalidRequest(
                    BAD_CONTEXT_TOKEN.format(token=token) + f" of {self.n_vocab} tokens"
                )

    def tokenize(self, text: str, *, bos: bool) -> list[int]:
        # special=True: templates write control tokens (<start_of_turn>) as text
        return list(self._model.tokenize(text.encode(), add_bos=bos, special=True))

    def piece(self, token: int, special: bool = False) -> bytes:
        """The token's bytes (``special``: control tokens as their text, else empty)."""
        cached = self._pieces.get((token, special))
        if cached is not None:
            return cached
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, 64, 0, special)
        if size < 0:  # too small: llama.cpp says how much it needs
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -size, 0, special)
        piece = self._pieces[(token, special)] = buffer.raw[:size]
        return piece

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))


def never() -> bool:
    return False


def build(
    job: GenerateJob,
    desc: Description,
    vocab: Vocab,
    n_ctx: int,
    num_keep: int,
    cancelled: Callable[[], bool] = never,
) -> Prompt:
    if job.images or any(m.images for m in job.messages):
        raise InvalidRequest(
            f"{job.model} does not support images: this server has no vision support"
        )
    if desc.embedding_only:
        verb = "chat" if job.kind == "chat" else "generate"
        raise InvalidRequest(f'"{job.model}" does not support {verb}')
    context = list(job.context or []) if job.kind == "generate" and not job.raw else []
    vocab.check(context)
    if job.kind == "generate" and job.raw:
        text, stops = job.prompt, list(desc.template.stops)
    elif job.kind == "generate" and job.suffix:
        return _insert(job, desc, vocab, n_ctx, num_keep)
    else:
        template: ChatTemplate = (
            GoTemplate(job.template, stops=desc.template.stops)
            if job.template and job.kind == "generate"
            else desc.template
        )
        rendered = _render(job, desc, template, vocab, n_ctx - len(context), cancelled)
        text, stops = rendered.prompt, rendered.stops
    tokens = context + vocab.tokenize(text, bos=not context)
    return Prompt(fit(tokens, job, n_ctx, num_keep), stops)


def _render(
    job: GenerateJob,
    desc: Description,
    template: ChatTemplate,
    vocab: Vocab,
    room: int,
    cancelled: Callable[[], bool],
) -> Rendered:
    spec = desc.spec
    messages = job_messages(job, system=spec.system, preamble=spec.messages)

    def render(chosen: list[ChatMessage]) -> Rendered:
        return template.render(chosen, tools=job.tools, think=job.think)

    rendered = render(messages)
    if job.kind != "chat" or job.truncate is False or len(messages) < 2:
        return rendered
    if len(vocab.tokenize(rendered.prompt, bos=True)) <= room:
        return rendered
    return _drop_oldest(
        messages,
        render,
        lambda chosen: len(vocab.tokenize(chosen.prompt, bos=True)) <= room,
        cancelled,
    )


def _drop_oldest(
    messages: list[ChatMessage],
    render: Callable[[list[ChatMessage]], Rendered],
    fits: Callable[[Rendered], bool],
    cancelled: Callable[[], bool],
) -> Rendered:
    """The rendering of the most messages that fits, like Ollama: the oldest non-system
    messages go first, the last one always stays (alone and too long, ``fit`` cuts it).

    Kept are the system messages before ``start`` and every message from ``start``; the
    answer is the smallest ``start`` that fits (all of them, ``start`` 0, do not). Searched
    from the end, with 1, 2, 4... messages kept until one does not fit, then halving the
    gap: O(log n) renders, each of what is kept, where trying every ``start`` was O(n)
    renders of O(n) messages. ``cancelled`` is read before each render."""
    last = len(messages) - 1
    systems = [i for i, m in enumerate(messages) if m.role == "system"]
    tried: dict[int, tuple[bool, Rendered]] = {}

    def attempt(start: int) -> bool:
        if cancelled():
            raise Cancelled("request canceled")
        kept = [messages[i] for i in systems[: bisect.bisect_left(systems, start)]]
        rendered = render(kept + messages[start:])
        tried[start] = (fits(rendered), rendered)
        return tried[start][0]

    if not attempt(last):
        return tried[last][1]
    good, bad, step = last, 0, 1  # good fits, bad does not
    while good - bad > 1:  # gallop: keep twice as many each time
        probe = max(good - step, bad + 1)
        if not attempt(probe):
            bad = probe
            break
        good, step = probe, step * 2
    while good - bad > 1:  # then halve the gap
        middle = (good + bad) // 2
        if attempt(middle):
            good = middle
        else:
            bad = middle
    return tried[good][1]


def _insert(job: GenerateJob, desc: Description, vocab: Vocab, n_ctx: int, keep: int) -> Prompt:
    """Fill-in-the-middle: prefix, suffix, then the model writes the middle."""
    if job.template:
        rendered = GoTemplate(job.template, stops=desc.template.stops).render_suffix(
            job.prompt, job.suffix
        )
        return Prompt(fit(vocab.tokenize(rendered.prompt, bos=True), job, n_ctx, keep), [])
    fim = desc.header.fim_tokens
    if fim is None:
        raise InvalidRequest(f"{job.model} does not support insert")
    prefix, suffix, middle = fim
    # llama.cpp's server order: <PRE> prefix <SUF> suffix <MID>
    tokens = [*vocab.tokenize("", bos=True), prefix]
    tokens += [*vocab.tokenize(job.prompt, bos=False), suffix]
    tokens += [*vocab.tokenize(job.suffix, bos=False), middle]
    return Prompt(fit(tokens, job, n_ctx, keep), [])


def fit(tokens: list[int], job: GenerateJob, n_ctx: int, num_keep: int) -> list[int]:
    """The prompt if it fits; else its first ``num_keep`` tokens and as much of its end as
    fits (Ollama's runner), or an error when the request said ``truncate: false`` or
    ``shift: false`` (Ollama refuses such a prompt when context shift is off)."""
    if len(tokens) <= n_ctx:
        return tokens
    if job.truncate is False or job.shift is False:
        raise InvalidRequest(f"{TOO_LONG} ({len(tokens)} tokens, context {n_ctx})")
    keep = min(num_keep, n_ctx // 2)
    return tokens[:keep] + tokens[len(tokens) - (n_ctx - keep) :]
