"""LlamaEngine on the real gemma3:270m (llama.cpp): options, structured output, logprobs,
seeds, load options and embeddings. The model is loaded once for the module (``e2e``)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from shared.errors import EngineFailure, InvalidRequest
from shared.messages import (
    ChatMessage,
    GenerateJob,
    LoadOptions,
    Logprob,
    SamplingOptions,
)
from worker.engine import Finish, Piece
from worker.llama.engine import LlamaEngine
from worker.model_files import DEFAULT_MODEL, default_model

# loads the real model: not for `make unit`
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.e2e]

N_CTX = 1024
GREEDY = SamplingOptions(temperature=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LlamaEngine]:
    engine = LlamaEngine([default_model()], n_ctx=N_CTX, n_gpu_layers=0)
    await engine.start()
    yield engine
    await engine.close()


def job(**fields: Any) -> GenerateJob:
    fields.setdefault("kind", "generate")
    return GenerateJob(
        request_id="r", model=DEFAULT_MODEL, enqueued_at_ms=0, deadline_ms=1, **fields
    )


def chat(text: str, **fields: Any) -> GenerateJob:
    return job(kind="chat", messages=[ChatMessage(role="user", content=text)], **fields)


async def run(engine: LlamaEngine, request: GenerateJob) -> tuple[list[Piece], Finish]:
    pieces: list[Piece] = []
    finish: Finish | None = None
    async for output in engine.generate(request):
        if isinstance(output, Piece):
            assert finish is None
            pieces.append(output)
        else:
            finish = output
    assert finish is not None
    return pieces, finish


def text_of(pieces: list[Piece]) -> str:
    return "".join(p.text for p in pieces)


async def test_format_schema_output_validates(engine: LlamaEngine) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 99},
            "colors": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["name", "age", "colors"],
    }
    request = chat(
        "Describe a cat as JSON: its name, age and colors.",
        format=schema,
        options=GREEDY.model_copy(update={"num_predict": 200}),
    )
    pieces, finish = await run(engine, request)
    assert finish.done_reason == "stop"
    value = json.loads(text_of(pieces))
    jsonschema.validate(value, schema)
    assert list(value) == ["name", "age", "colors"]  # the schema's order


async def test_format_json_parses(engine: LlamaEngine) -> None:
    request = chat(
        "List three fruits as a JSON object.",
        format="json",
        options=GREEDY.model_copy(update={"num_predict": 150, "repeat_penalty": 1.5}),
    )
    pieces, _ = await run(engine, request)
    assert isinstance(json.loads(text_of(pieces)), dict)


async def test_unknown_format_fails(engine: LlamaEngine) -> None:
    with pytest.raises(InvalidRequest, match="invalid format"):
        await run(engine, chat("hi", format="yaml"))


async def test_a_schema_whose_grammar_llama_cpp_refuses_is_the_requests_fault(
    engine: LlamaEngine,
) -> None:
    """Within the API's repetition bound, yet past llama.cpp's (which counts the repeated
    item's rules too): a 400, not a 500; the engine serves the next request."""
    schema = {"type": "string", "maxLength": 1500}
    with pytest.raises(InvalidRequest, match="refuses the grammar"):
        await run(engine, chat("hi", format=schema))
    pieces, _ = await run(engine, chat("hi", options=GREEDY.model_copy(update={"num_predict": 2})))
    assert pieces


async def test_logprobs_per_token_with_sorted_alternatives(engine: LlamaEngine) -> None:
    request = chat(
        "Say hello.",
        logprobs=True,
        top_logprobs=5,
        options=GREEDY.model_copy(update={"num_predict": 8}),
    )
    pieces, finish = await run(engine, request)
    entries: list[Logprob] = [lp for p in pieces for lp in p.logprobs or []]
    assert len(entries) == finish.n_decoded
    assert "".join(e.token for e in entries) == text_of(pieces)
    for entry in entries:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        top = entry.top_logprobs or []
        assert len(top) == 5
        values = [t.logprob for t in top]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-6
        # greedy: the chosen token is the likeliest one, with the same log-probability
        assert top[0].token == entry.token
        assert top[0].logprob == pytest.approx(entry.logprob)


async def test_seed_makes_sampling_repeatable(engine: LlamaEngine) -> None:
    def seeded(seed: int) -> GenerateJob:
        options = SamplingOptions(seed=seed, temperature=1.5, top_k=100, num_predict=16)
        return job(prompt="Once upon a time", options=options)

    first, _ = await run(engine, seeded(7))
    # the KV cache moves on meanwhile
    await run(engine, chat("Something else.", options=SamplingOptions(num_predict=4)))
    again, _ = await run(engine, seeded(7))
    other, _ = await run(engine, seeded(8))
    assert text_of(first) == text_of(again)
    assert text_of(first) != text_of(other)


async def test_ollamas_seed_example_repeats_with_the_prompt_cached(engine: LlamaEngine) -> None:
    """Ollama's docs example (seed 123, default temperature) sent twice: the second run
    finds its prompt in a slot's cache, and must still say the same."""
    request = job(prompt="Why is the sky blue?", options=SamplingOptions(seed=123, num_predict=24))
    first, _ = await run(engine, request)
    again, finish = await run(engine, request)
    assert finish.n_cached > 0
    assert text_of(again) == text_of(first)


async def test_concurrent_requests_answer_as_they_would_alone(engine: LlamaEngine) -> None:
    """Greedy and seeded requests batched together (one decode per step) give each the
    text it gives alone."""
    requests = [
        job(prompt=f"Question {i}: name a {thing}.", raw=True, options=options)
        for i, thing in enumerate(["colour", "fruit", "river", "planet"])
        for options in [
            GREEDY.model_copy(update={"num_predict": 24}),
            SamplingOptions(seed=i, temperature=0.9, num_predict=24),
        ]
    ]
    alone = [text_of((await run(engine, r))[0]) for r in requests]
    together = await asyncio.gather(*(run(engine, r) for r in requests))
    assert [text_of(pieces) for pieces, _ in together] == alone
    [status] = engine.loaded()
    assert status.slots >= 2  # they did share steps (CPU auto gives up to 4 slots)


async def test_num_predict_and_stop_strings(engine: LlamaEngine) -> None:
    options = GREEDY.model_copy(update={"num_predict": 5})
    pieces, finish = await run(engine, job(prompt="Count: 1, 2, 3,", raw=True, options=options))
    assert (finish.done_reason, finish.n_decoded) == ("length", 5)
    assert finish.context is None  # raw mode returns no context
    # a stop string from the middle of the text the model wrote, whatever it is, ends it there
    full = text_of(pieces)
    assert full, "no text to take a stop string from"
    stop = full[len(full) // 2 :][:2]
    options = GREEDY.model_copy(update={"num_predict": 5, "stop": [stop]})
    cut, finish = await run(engine, job(prompt="Count: 1, 2, 3,", raw=True, options=options))
    assert finish.done_reason == "stop"
    assert text_of(cut) == full[: full.index(stop)]


async def test_context_continues_a_generation(engine: LlamaEngine) -> None:
    options = GREEDY.model_copy(update={"num_predict": 4})
    _, first = await run(engine, job(prompt="Name a color.", options=options))
    assert first.context is not None
    assert len(first.context) == first.n_prompt_tokens + first.n_decoded
    _, second = await run(engine, job(prompt="Another?", context=first.context, options=options))
    assert second.context is not None
    assert second.context[: len(first.context)] == first.context
    assert second.n_prompt_tokens > len(first.context)


async def test_template_override_uses_go_syntax(engine: LlamaEngine) -> None:
    options = GREEDY.model_copy(update={"num_predict": 1})
    _, plain = await run(engine, job(prompt="Hello", template="{{ .Prompt }}", options=options))
    _, framed = await run(
        engine,
        job(prompt="Hello", system="S", template="{{ .System }}: {{ .Prompt }}", options=options),
    )
    assert plain.n_prompt_tokens == 2  # BOS + "Hello"
    assert framed.n_prompt_tokens > plain.n_prompt_tokens
    with pytest.raises(EngineFailure, match="unexpected EOF"):
        await run(engine, job(prompt="Hello", template="{{ if .Prompt }}"))


async def test_requests_the_model_cannot_serve(engine: LlamaEngine) -> None:
    with pytest.raises(InvalidRequest, match="does not support insert"):
        await run(engine, job(prompt="def f(", suffix="return 1"))
    with pytest.raises(InvalidRequest, match="images"):
        await run(engine, job(prompt="What is this?", images=["aGk="]))


async def test_closing_the_stream_cancels_and_frees_the_model(engine: LlamaEngine) -> None:
    outputs = engine.generate(job(prompt="Write a long essay.", options=SamplingOptions()))
    async for _ in outputs:
        break
    await outputs.aclose()  # type: ignore[attr-defined]
    _, finish = await run(
        engine, job(prompt="Hi", options=GREEDY.model_copy(update={"num_predict": 2}))
    )
    assert finish.n_decoded == 2


async def test_embeddings(engine: LlamaEngine) -> None:
    result = await engine.embed(job(kind="embed", inputs=["a cat", "a dog", "a cat"]))
    assert len(result.vectors) == 3
    assert all(len(v) == engine.models()[0].embedding_length for v in result.vectors)
    assert result.vectors[0] == pytest.approx(result.vectors[2], rel=1e-4)
    assert result.vectors[0] != pytest.approx(result.vectors[1], rel=1e-3)
    assert result.n_prompt_tokens == 3 * 3  # BOS + two tokens each
    long_text = "word " * (N_CTX + 50)
    with pytest.raises(InvalidRequest, match="the input length exceeds the context length"):
        await engine.embed(job(kind="embed", inputs=[long_text], truncate=False))
    cut = await engine.embed(job(kind="embed", inputs=[long_text]))
    assert cut.n_prompt_tokens == N_CTX


async def test_model_info_in_full(engine: LlamaEngine) -> None:
    full = engine.full_model_info(DEFAULT_MODEL)
    assert len(full["tokenizer.ggml.tokens"]) == 262144
    assert engine.models()[0].model_info["tokenizer.ggml.tokens"] == []


async def test_small_context_load_shift_and_truncation(engine: LlamaEngine) -> None:
    """Last in the module: it reloads the model with num_ctx 256, then back."""
    small = LoadOptions(num_ctx=256)
    await engine.load(DEFAULT_MODEL, small)
    [status] = engine.loaded()
    assert status.context_length == 256
    assert status.size_bytes > engine.models()[0].size_bytes
    # the context fills up: with shift the answer goes on, without it ends there
    options = GREEDY.model_copy(update={"num_predict": 260})
    request = job(prompt="Count from one to a thousand.", options=options, load=small)
    _, shifted = await run(engine, request)
    assert shifted.n_decoded == 260
    _, stopped = await run(engine, request.model_copy(update={"shift": False}))
    assert stopped.done_reason == "length"
    assert stopped.n_prompt_tokens + stopped.n_decoded <= 257
    # a chat longer than the context loses its oldest turns, unless truncate is false
    history = [
        ChatMessage(role="system", content="Be brief."),
        *[
            ChatMessage(role=role, content=f"Turn {i}: " + "blah " * 40)
            for i, role in enumerate(["user", "assistant"] * 3)
        ],
        ChatMessage(role="user", content="What is 2+2?"),
    ]
    options = GREEDY.model_copy(update={"num_predict": 1})
    _, truncated = await run(engine, job(kind="chat", messages=history, options=options))
    assert truncated.n_prompt_tokens <= 256
    with pytest.raises(InvalidRequest, match="longer than the context length"):
        await run(engine, job(kind="chat", messages=history, truncate=False, options=options))
    # a prompt too long for the context keeps its start and end, unless shift is off
    long_prompt = "Start. " + "blah " * 300 + "End."
    _, cut = await run(engine, job(prompt=long_prompt, options=options))
    assert cut.n_prompt_tokens == 256
    with pytest.raises(InvalidRequest, match="longer than the context length"):
        await run(engine, job(prompt=long_prompt, shift=False, options=options))
    await engine.unload(DEFAULT_MODEL)
    assert engine.loaded() == []
    await engine.load(DEFAULT_MODEL, LoadOptions())
    assert engine.loaded()[0].context_length == N_CTX
