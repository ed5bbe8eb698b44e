"""Continuous batching in the llama engine, on a tiny random-weight llama GGUF: many
sequences in one decode, each answer what it would be alone, slots and their KV cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from shared.errors import EngineFailure
from shared.messages import ChatMessage, GenerateJob, SamplingOptions
from tests.worker.test_llama_engine_tiny import write_tiny_llama
from worker.engine import Finish, Piece
from worker.llama import batch, outbox, pieces
from worker.llama.batch import Scheduler
from worker.llama.engine import LlamaEngine
from worker.llama.sequence import Sequence
from worker.model_files import ModelSpec

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "tiny:latest"
SLOTS = 4
N_CTX = 512


def greedy(n: int) -> SamplingOptions:
    return SamplingOptions(temperature=0, num_predict=n)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaEngine]:
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    write_tiny_llama(path)
    engine = LlamaEngine(
        [ModelSpec(name=MODEL, path=path)], n_ctx=N_CTX, n_gpu_layers=0, num_parallel=SLOTS
    )
    await engine.start()
    yield engine
    await engine.close()


def scheduler(engine: LlamaEngine) -> Scheduler:
    return engine._loaded[MODEL].scheduler


def job(prompt: str, **fields: Any) -> GenerateJob:
    fields.setdefault("kind", "generate")
    fields.setdefault("raw", True)
    fields.setdefault("options", greedy(16))
    return GenerateJob(
        request_id="r", model=MODEL, enqueued_at_ms=0, deadline_ms=1, prompt=prompt, **fields
    )


async def run(engine: LlamaEngine, request: GenerateJob) -> tuple[str, Finish]:
    text, finish = "", None
    async for output in engine.generate(request):
        if isinstance(output, Piece):
            text += output.text
        else:
            finish = output
    assert finish is not None
    return text, finish


PROMPTS = [f"the {word} a{'e' * i} o" for i, word in enumerate("abcdefgh")]


async def test_slots_are_the_engine_setting(engine: LlamaEngine) -> None:
    [status] = engine.loaded()
    assert status.slots == SLOTS == engine.slots(MODEL)


async def test_concurrent_greedy_requests_answer_as_they_would_alone(engine: LlamaEngine) -> None:
    alone = [await run(engine, job(p)) for p in PROMPTS]
    widest_before = scheduler(engine).widest
    together = await asyncio.gather(*(run(engine, job(p)) for p in PROMPTS))
    assert [text for text, _ in together] == [text for text, _ in alone]
    assert [f.n_decoded for _, f in together] == [f.n_decoded for _, f in alone]
    # they really shared decode steps (8 requests through 4 slots)
    assert scheduler(engine).widest == SLOTS
    assert widest_before == 1 or widest_before == SLOTS


async def test_each_request_in_a_batch_keeps_its_own_options(engine: LlamaEngine) -> None:
    requests = [
        job(PROMPTS[0]),
        job(PROMPTS[1], options=SamplingOptions(temperature=0.9, seed=7, num_predict=16)),
        job(PROMPTS[2], options=SamplingOptions(temperature=0.9, seed=8, num_predict=16)),
        job(PROMPTS[3], format="json", options=greedy(24)),
        job(PROMPTS[4], options=SamplingOptions(temperature=0, num_predict=5, stop=["e"])),
    ]
    alone = [await run(engine, r) for r in requests]
    together = await asyncio.gather(*(run(engine, r) for r in requests))
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert together[1][0] != together[2][0]  # different seeds, different draws


async def test_a_seed_repeats_with_or_without_the_prompt_cached(engine: LlamaEngine) -> None:
    request = job(PROMPTS[5], options=SamplingOptions(temperature=0.8, seed=123, num_predict=24))
    first, _ = await run(engine, request)
    again, finish = await run(engine, request)
    assert finish.n_cached > 0  # the second run found its prompt in a slot
    assert again == first
    crowd = [run(engine, job(p, options=greedy(24))) for p in PROMPTS[:3]]
    *_, (in_batch, _) = await asyncio.gather(*crowd, run(engine, request))
    assert in_batch == first


async def test_a_chats_next_turn_reuses_its_slot(engine: LlamaEngine) -> None:
    turn = [ChatMessage(role="user", content="the a e o")]
    first_text, first = await run(engine, job("", kind="chat", raw=False, messages=turn))
    # other work in between takes other slots: the conversation's KV stays
    await asyncio.gather(*(run(engine, job(p)) for p in PROMPTS[:2]))
    turn += [
        ChatMessage(role="assistant", content=first_text),
        ChatMessage(role="user", content="a e"),
    ]
    _, second = await run(engine, job("", kind="chat", raw=False, messages=turn))
    assert first.context is not None and second.context is not None
    prompt = second.context[: second.n_prompt_tokens]
    shared = 0
    while shared < first.n_prompt_tokens and first.context[shared] == prompt[shared]:
        shared += 1
    assert shared > first.n_prompt_tokens // 2  # the templates agree on most of turn one
    # what the slot read as a prompt is reused (its answer, decoded token by token, is not:
    # a fresh read would round differently), all but a last piece read again
    assert second.n_cached == min(shared, second.n_prompt_tokens - pieces.MIN_PIECE)
    assert second.n_cached > 0


async def test_a_cancelled_sequence_frees_its_slot_at_once(engine: LlamaEngine) -> None:
    long = [job(p, options=greedy(300)) for p in PROMPTS[:SLOTS]]
    streams = [engine.generate(r) for r in long]
    firsts = await asyncio.gather(*(anext(s) for s in streams))  # all four slots taken
    assert all(isinstance(f, Piece) for f in firsts)
    waiting = asyncio.create_task(run(engine, job(PROMPTS[6], options=greedy(3))))
    await asyncio.sleep(0)
    await streams[0].aclose()  # type: ignore[attr-defined]
    rest = [asyncio.create_task(_drain(s)) for s in streams[1:]]
    # the waiting request takes the freed slot and finishes long before the long ones;
    # one of those may end on its own end token (greedy noise on random weights can differ
    # with the batch it runs in), but none can have reached its 300 tokens
    _, finish = await waiting
    assert finish.n_decoded == 3
    ended = [task.result() for task in rest if task.done()]
    assert all(f.done_reason == "stop" for f in ended) and len(ended) < len(rest)
    finishes = await asyncio.gather(*rest)
    assert all(f.n_decoded == 300 for f in finishes if f.done_reason == "length")
    # its KV cells are empty again; the finished ones keep theirs as a prefix cache
    runtime = scheduler(engine).runtime
    for slot in scheduler(engine)._slots:
        assert runtime.last_position(slot.seq_id) == len(slot.cached) - 1


async def _drain(stream: AsyncIterator[Any]) -> Finish:
    async for output in stream:
        if isinstance(output, Finish):
            return output
    raise AssertionError("no Finish")


async def test_a_long_prompt_does_not_stall_running_streams(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "PREFILL_BUDGET", 16)
    # greedy noise that goes on for 186 tokens before the model's end token
    running = engine.generate(job("1 1 1", options=greedy(400), logprobs=True))
    tokens_before = 0
    async for output in running:
        assert isinstance(output, Piece)
        tokens_before += len(output.logprobs or [])
        if tokens_before >= 3:
            break
    long_prompt = " ".join(["the a e o"] * 60)  # a few hundred tokens: many chunks of 16
    long = asyncio.create_task(run(engine, job(long_prompt, options=greedy(1))))
    during = 0
    while not long.done():
        output = await anext(running)
        assert isinstance(output, Piece)
        during += len(output.logprobs or [])
    _, finish = await long
    await running.aclose()  # type: ignore[attr-defined]
    chunks = finish.n_prompt_tokens // 16
    assert chunks >= 8
    # the running stream got a token in (nearly) every step the long prompt was read in
    assert during >= chunks - 2


async def test_a_short_prompt_beside_a_long_one_waits_a_piece_not_the_whole_prompt(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pieces of one size share a step, so one of two prompts being read waits: the one
    with less left goes first (a new chat turn is not held up by another's long document)."""
    monkeypatch.setattr(batch, "PREFILL_BUDGET", 16)
    running = engine.generate(job("1 1 1", options=greedy(400)))  # decoding: pieces of 16
    assert isinstance(await anext(running), Piece)
    long_prompt = " ".join(["o e a the"] * 60)  # no slot has any of it cached
    long = asyncio.create_task(run(engine, job(long_prompt, options=greedy(1))))
    for _ in range(3):  # the long prompt is being read
        assert isinstance(await anext(running), Piece)
    _, short = await run(engine, job("the a", options=greedy(1)))
    assert not long.done()  # the short one did not wait for the long one's whole prompt
    assert short.n_decoded == 1
    _, finish = await long
    assert finish.n_prompt_tokens > 16 * 8
    await running.aclose()  # type: ignore[attr-defined]


async def test_memory_follows_the_books_after_reuse(engine: LlamaEngine) -> None:
    await run(engine, job(PROMPTS[0] + " e e e", options=greedy(8)))
    runtime = scheduler(engine).runtime
    for slot in scheduler(engine)._slots:
        assert runtime.last_position(slot.seq_id) == len(slot.cached) - 1
        assert len(slot.cached) <= N_CTX


@pytest.mark.parametrize(
    ("remaining", "budget", "size"),
    [
        (5, 256, 5),  # a short prompt: whole
        (300, 256, 256),
        (260, 256, 252),  # never leave a rest shorter than a piece
        (12, 10, 12),  # too short to split: whole, a little over budget
        (100, 4, 8),  # never a piece shorter than MIN_PIECE
        (8, 256, 8),
    ],
)
async def test_prompt_pieces_are_never_short(remaining: int, budget: int, size: int) -> None:
    assert pieces.piece_size(remaining, budget) == size


async def test_a_failing_sequence_fails_its_request_alone(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [job(p, options=greedy(24)) for p in PROMPTS[:3]]
    alone = [await run(engine, r) for r in requests]
    broken = job("1 1 1", options=greedy(100)).model_copy(update={"request_id": "broken"})
    advance = Sequence.advance

    def failing(self: Sequence, row: int) -> list[Any]:
        if self.job.request_id == "broken" and len(self.generated) >= 3:
            raise EngineFailure("boom")
        return advance(self, row)

    monkeypatch.setattr(Sequence, "advance", failing)
    results = await asyncio.gather(
        run(engine, broken), *(run(engine, r) for r in requests), return_exceptions=True
    )
    assert isinstance(results[0], EngineFailure) and results[0].message == "boom"
    assert [r[0] for r in results[1:] if isinstance(r, tuple)] == [t for t, _ in alone]


async def test_a_reader_that_lags_holds_back_its_sequence_only(engine: LlamaEngine) -> None:
    lagging_job = job("1 1 1", options=greedy(150), logprobs=True)
    alone_text, _ = await run(engine, lagging_job)
    lagging = engine.generate(lagging_job)
    first = await anext(lagging)  # then it is not read for a while
    assert isinstance(first, Piece)
    # another request runs to its end meanwhile: the model's thread never waits on a reader
    # ("{" goes on for 167 tokens: longer than the lagging reader's outbox holds)
    _, finish = await asyncio.wait_for(run(engine, job("{", options=greedy(120))), 30)
    assert finish.n_decoded == 120 > outbox.HANDOFF_LIMIT
    text = first.text
    async for output in lagging:
        if isinstance(output, Piece):
            text += output.text
    assert text == alone_text  # nothing lost or reordered while it sat out
