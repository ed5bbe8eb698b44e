"""Options and inputs that must not hurt a worker, on the tiny random-weight llama of
``test_llama_engine_tiny`` (trained context 512): load-time options bounded to what the
model and the machine allow, ``repeat_last_n`` and ``num_predict`` bounded by the context,
``context`` ids checked against the vocabulary, and a long chat's truncation in a few
renders (not one per dropped message) that stops when the request is cancelled."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from shared.errors import Cancelled, InvalidRequest
from shared.messages import ChatMessage, GenerateJob, LoadOptions, SamplingOptions
from tests.worker.test_llama_engine_tiny import MODEL, vocabulary, write_tiny_llama
from worker.engine import Finish
from worker.llama.engine import LlamaEngine
from worker.llama.model import DEFAULT_BATCH, MAX_BATCH, LoadParams, cpu_count
from worker.llama.prompt import _drop_oldest
from worker.llama.sequence import MAX_PREDICT_PER_CTX, Sequence
from worker.model_files import ModelSpec
from worker.prompts.template import Rendered

pytestmark = pytest.mark.asyncio(loop_scope="module")

INT32_MAX = 2**31 - 1
TRAINED = 512
N_CTX = 256


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaEngine]:
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    write_tiny_llama(path)
    engine = LlamaEngine(
        [ModelSpec(name=MODEL, path=path)], n_ctx=N_CTX, n_gpu_layers=0, num_parallel=1
    )
    await engine.start()
    yield engine
    await engine.close()


def job(**fields: Any) -> GenerateJob:
    fields.setdefault("kind", "generate")
    fields.setdefault("model", MODEL)
    fields.setdefault("options", SamplingOptions(temperature=0, num_predict=4))
    return GenerateJob(request_id="r", enqueued_at_ms=0, deadline_ms=1, **fields)


async def finish_of(engine: LlamaEngine, request: GenerateJob) -> Finish:
    outputs = [output async for output in engine.generate(request)]
    assert isinstance(outputs[-1], Finish)
    return outputs[-1]


def chat(n: int) -> list[ChatMessage]:
    return [
        ChatMessage(role="user" if i % 2 == 0 else "assistant", content=f"message {i} the tea")
        for i in range(n)
    ]


# -- load-time options ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "effective"),
    [
        # num_ctx: the trained context at most (Ollama's rule), the worker's when not given
        (LoadOptions(num_ctx=INT32_MAX), {"num_ctx": TRAINED}),
        (LoadOptions(num_ctx=-5), {"num_ctx": N_CTX}),
        (LoadOptions(num_ctx=1), {"num_ctx": 4}),
        # num_batch: up to the context (the default when the context is smaller)
        (LoadOptions(num_batch=INT32_MAX), {"num_batch": DEFAULT_BATCH}),
        (LoadOptions(num_ctx=TRAINED, num_batch=INT32_MAX), {"num_batch": DEFAULT_BATCH}),
        (LoadOptions(num_batch=1), {"num_batch": 32}),
        (LoadOptions(num_batch=-1), {"num_batch": DEFAULT_BATCH}),
        # num_thread: the CPUs this process may use, at most; 0 or less: all of them
        (LoadOptions(num_thread=INT32_MAX), {"num_thread": cpu_count()}),
        (LoadOptions(num_thread=-3), {"num_thread": cpu_count()}),
        (LoadOptions(num_thread=1), {"num_thread": 1}),
        (LoadOptions(main_gpu=-7), {"main_gpu": 0}),
    ],
)
async def test_load_options_are_bounded(
    engine: LlamaEngine, asked: LoadOptions, effective: dict[str, int]
) -> None:
    got = engine.effective_options(MODEL, asked).model_dump()
    assert {key: got[key] for key in effective} == effective


@pytest.mark.parametrize(
    ("num_batch", "n_batch"), [(INT32_MAX, MAX_BATCH), (4096, MAX_BATCH), (1024, 1024)]
)
async def test_a_batch_is_at_most_max_batch_however_long_the_context(
    num_batch: int, n_batch: int
) -> None:
    # a batch is also the micro-batch: its compute buffers grow with batch x context
    # (gemma3:270m at 32k: 44 GiB for a batch of 32768, which failed to load)
    long_context: Any = SimpleNamespace(trained_context=32768, embedding_only=False)
    options = LoadOptions(num_ctx=INT32_MAX, num_batch=num_batch)
    params = LoadParams.resolve(options, long_context, n_ctx=N_CTX, n_gpu_layers=0)
    assert (params.n_ctx, params.n_batch) == (32768, n_batch)


async def test_options_that_come_to_the_same_load_are_equal(engine: LlamaEngine) -> None:
    # equal effective options: the worker's residency reloads nothing for them
    same = [
        LoadOptions(num_ctx=TRAINED),
        LoadOptions(num_ctx=INT32_MAX),
        LoadOptions(num_ctx=10**6, num_thread=10**6, num_batch=10**6),
    ]
    effective = [engine.effective_options(MODEL, options) for options in same]
    assert effective[0] == effective[1]
    assert effective[2].num_ctx == TRAINED and effective[2].num_thread == cpu_count()


async def test_a_load_with_extreme_options_loads_what_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path)
    engine = LlamaEngine([ModelSpec(name=MODEL, path=path)], n_ctx=N_CTX, n_gpu_layers=0)
    try:
        extreme = LoadOptions(num_ctx=INT32_MAX, num_batch=INT32_MAX, num_thread=INT32_MAX)
        started = time.perf_counter()
        await engine.load(MODEL, extreme)
        assert time.perf_counter() - started < 30  # not 2^31 batch rows nor threads
        [status] = engine.loaded()
        assert status.context_length == TRAINED
        finish = await finish_of(engine, job(prompt="the a"))
        assert finish.n_decoded == 4
    finally:
        await engine.close()


# -- runtime options --------------------------------------------------------------------


@pytest.mark.parametrize("last_n", [INT32_MAX, -1, 10**6])
async def test_repeat_last_n_is_bounded_by_the_context(engine: LlamaEngine, last_n: int) -> None:
    # llama.cpp sizes the penalty's ring buffer by it: 2^31-1 asked for ~8 GiB
    options = SamplingOptions(
        temperature=0, num_predict=4, repeat_last_n=last_n, repeat_penalty=1.3
    )
    finish = await finish_of(engine, job(prompt="the a", options=options))
    assert finish.n_decoded == 4


async def test_num_predict_is_bounded_at_ten_contexts(engine: LlamaEngine) -> None:
    model = engine._loaded[MODEL]
    for asked in (INT32_MAX, -1, 0):
        options = SamplingOptions(temperature=0, num_predict=asked)
        seq = Sequence(model.runtime, model.vocab, job(prompt="the a", options=options))
        assert seq.limit == MAX_PREDICT_PER_CTX * N_CTX
        seq.close()


# -- context ids --------------------------------------------------------------------------


@pytest.mark.parametrize("token", [len(vocabulary()), INT32_MAX, -1])
async def test_a_context_id_outside_the_vocabulary_is_a_400(
    engine: LlamaEngine, token: int
) -> None:
    request = job(prompt="a", context=[1, 5, token])
    with pytest.raises(InvalidRequest) as info:
        await finish_of(engine, request)
    assert info.value.status == 400
    assert info.value.message == (
        f"invalid context: token id {token} is not in the model's vocabulary "
        f"of {len(vocabulary())} tokens"
    )
    # the model goes on serving
    assert (await finish_of(engine, job(prompt="the a"))).n_decoded == 4


async def test_context_ids_in_the_vocabulary_are_fed_back(engine: LlamaEngine) -> None:
    first = await finish_of(engine, job(prompt="the a"))
    assert first.context is not None
    again = await finish_of(engine, job(prompt="tea", context=first.context))
    assert again.context is not None and again.context[: len(first.context)] == first.context


# -- truncating a long chat ---------------------------------------------------------------


def linear_drop(
    messages: list[ChatMessage],
    render: Callable[[list[ChatMessage]], Rendered],
    fits: Callable[[Rendered], bool],
) -> Rendered:
    """The old search, one render per dropped message: the reference."""
    rendered = render(messages)
    last = len(messages) - 1
    for start in range(1, last + 1):
        kept = [m for m in messages[:start] if m.role == "system"] + messages[start:]
        rendered = render(kept)
        if fits(rendered):
            return rendered
    return rendered


def _words(room: int) -> tuple[Callable[[list[ChatMessage]], Rendered], Callable[..., bool]]:
    def render(chosen: list[ChatMessage]) -> Rendered:
        return Rendered("".join(f"<{m.role}>{m.content}" for m in chosen), [])

    def fits(rendered: Rendered) -> bool:
        return len(rendered.prompt.split()) <= room

    return render, fits


@pytest.mark.parametrize("room", [1, 3, 7, 40, 150, 299])
async def test_the_search_keeps_what_one_render_per_message_kept(room: int) -> None:
    messages = chat(100)
    messages[0] = ChatMessage(role="system", content="be brief")
    messages[37] = ChatMessage(role="system", content="mid system")
    render, fits = _words(room)
    found = _drop_oldest(messages, render, fits, lambda: False)
    assert found == linear_drop(messages, render, fits)


async def test_the_search_renders_a_few_times_not_once_per_message() -> None:
    calls = []
    render, fits = _words(50)

    def counted(chosen: list[ChatMessage]) -> Rendered:
        calls.append(len(chosen))
        return render(chosen)

    _drop_oldest(chat(1000), counted, fits, lambda: False)
    assert len(calls) <= 2 * 10 + 2  # two searches of log2(1000) steps each, at most
    assert max(calls) <= 2 * 50  # and only ever around what is kept


async def test_a_long_chat_is_truncated_in_well_under_a_second(engine: LlamaEngine) -> None:
    model = engine._loaded[MODEL]
    request = job(kind="chat", messages=chat(1000))
    started = time.perf_counter()
    seq = Sequence(model.runtime, model.vocab, request)
    elapsed = time.perf_counter() - started
    seq.close()
    assert len(seq.tokens) <= N_CTX
    # one render per dropped message took 14 s here (docs/reliability.md)
    assert elapsed < 3


async def test_truncation_stops_when_the_request_is_cancelled(engine: LlamaEngine) -> None:
    model = engine._loaded[MODEL]
    asked = []

    def cancelled() -> bool:
        asked.append(True)
        return len(asked) > 2

    with pytest.raises(Cancelled):
        Sequence(model.runtime, model.vocab, job(kind="chat", messages=chat(1000)), cancelled)
    assert len(asked) == 3
