"""FakeEngine: the whole engine protocol, deterministic, with schema-valid JSON and tool calls."""

from __future__ import annotations

import math
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest

from shared.errors import EngineFailure, InvalidRequest
from shared.messages import ChatMessage, GenerateJob, LoadOptions, SamplingOptions
from worker.engine import Finish, Piece
from worker.fake_engine import FAIL_MARKER, REPLY, THOUGHTS, FakeEngine
from worker.postprocess import Chunk, Postprocessor
from worker.schema_example import example

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "required": ["city", "unit", "days", "hourly", "tags", "where"],
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "ratio": {"type": "number"},
                "hourly": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "where": {
                    "type": "object",
                    "required": ["lat"],
                    "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                },
            },
        },
    },
}

#: What Pydantic's ``model_json_schema()`` makes of a nested model with an enum and optionals.
PYDANTIC_SCHEMA: dict[str, Any] = {
    "$defs": {
        "Color": {"enum": ["red", "green"], "title": "Color", "type": "string"},
        "Pet": {
            "properties": {
                "name": {"title": "Name", "type": "string", "minLength": 8},
                "age": {"title": "Age", "type": "integer", "exclusiveMinimum": 3},
                "color": {"$ref": "#/$defs/Color"},
                "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            },
            "required": ["name", "age", "color", "nickname"],
            "title": "Pet",
            "type": "object",
        },
    },
    "properties": {
        "owner": {"title": "Owner", "type": "string", "maxLength": 3},
        "pets": {"items": {"$ref": "#/$defs/Pet"}, "title": "Pets", "type": "array", "minItems": 2},
        "score": {"type": ["number", "null"], "maximum": 0.5},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]},
        "both": {"allOf": [{"$ref": "#/$defs/Color"}]},
    },
    "required": ["owner", "pets", "score", "pair", "both"],
    "title": "Household",
    "type": "object",
}


def _job(**fields: Any) -> GenerateJob:
    values: dict[str, Any] = {
        "request_id": "r1",
        "model": "m:1",
        "kind": "chat",
        "messages": [ChatMessage(role="user", content="hi")],
        "enqueued_at_ms": 0,
        "deadline_ms": 1,
    }
    values.update(fields)
    return GenerateJob(**values)


async def _engine(**kwargs: Any) -> FakeEngine:
    engine = FakeEngine(["m:1", "n:1"], 0, **kwargs)
    await engine.start()
    return engine


async def _collect(engine: FakeEngine, job: GenerateJob) -> tuple[list[Piece], Finish]:
    pieces: list[Piece] = []
    async for output in engine.generate(job):
        if isinstance(output, Finish):
            return pieces, output
        pieces.append(output)
    raise AssertionError("no Finish")


def _post(pieces: list[Piece], *, thinking: bool, tools: bool) -> list[Chunk]:
    post = Postprocessor(thinking=thinking, tools=tools)
    return [c for p in pieces for c in post.feed(p)] + post.finish()


async def test_plain_reply_and_limits_as_before() -> None:
    engine = await _engine()
    pieces, finish = await _collect(engine, _job())
    assert "".join(p.text for p in pieces) == REPLY and finish.done_reason == "stop"
    pieces, finish = await _collect(engine, _job(options=SamplingOptions(num_predict=2)))
    assert "".join(p.text for p in pieces) == "Hello from " and finish.done_reason == "length"
    assert engine.seen == ["r1", "r1"]
    with pytest.raises(EngineFailure):
        await _collect(engine, _job(prompt=FAIL_MARKER, kind="generate", messages=[]))


async def test_only_loaded_models_generate_and_books_are_kept() -> None:
    engine = await _engine()
    assert [m.name for m in engine.loaded()] == ["m:1"]  # the first model is preloaded
    with pytest.raises(EngineFailure, match="not loaded"):
        await _collect(engine, _job(model="n:1"))
    await engine.load("n:1", LoadOptions(num_ctx=1024))
    loaded = {m.name: m for m in engine.loaded()}
    assert loaded["n:1"].context_length == 1024 and loaded["m:1"].context_length == 4096
    assert loaded["n:1"].size_bytes == 1024 * 1024
    await engine.unload("m:1")
    assert [m.name for m in engine.loaded()] == ["n:1"]
    assert engine.history == [("load", "m:1"), ("load", "n:1"), ("unload", "m:1")]
    with pytest.raises(EngineFailure, match="not found"):
        await engine.load("nope", LoadOptions())


async def test_capabilities_come_from_the_settings() -> None:
    engine = FakeEngine(["m:1"], 0, capabilities=["completion", "vision"])
    assert engine.models()[0].capabilities == ["completion", "vision"]
    info = engine.full_model_info("m:1")
    assert len(info["tokenizer.ggml.tokens"]) > 5
    assert engine.models()[0].model_info["tokenizer.ggml.tokens"] == []  # shortened in adverts


async def test_thinking_comes_first_when_asked_and_capable() -> None:
    engine = await _engine()
    pieces, _ = await _collect(engine, _job(think=True))
    chunks = _post(pieces, thinking=True, tools=False)
    assert "".join(c.thinking for c in chunks) == THOUGHTS
    assert "".join(c.text for c in chunks) == REPLY
    pieces, _ = await _collect(engine, _job(think=None))
    assert "<think>" not in "".join(p.text for p in pieces)
    plain = FakeEngine(["m:1"], 0, capabilities=["completion"])
    await plain.start()
    pieces, _ = await _collect(plain, _job(think=True))
    assert "".join(p.text for p in pieces) == REPLY


async def test_tools_give_a_call_whose_arguments_fit_the_schema() -> None:
    engine = await _engine()
    pieces, _ = await _collect(engine, _job(tools=[WEATHER_TOOL]))
    assert len(pieces) > 2  # markup split over pieces, as a model streams it
    chunks = _post(pieces, thinking=True, tools=True)
    assert "".join(c.text for c in chunks) == ""
    (call,) = [call for c in chunks for call in c.tool_calls]
    assert call.function.name == "get_weather"
    arguments = call.function.arguments
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])  # type: ignore[index]
    assert arguments["city"] == "Paris" and arguments["unit"] == "celsius"
    assert arguments["days"] == 1 and arguments["hourly"] is True and arguments["tags"] == ["Paris"]
    assert "ratio" not in arguments  # only the required properties


async def test_after_a_tool_result_it_answers_in_text() -> None:
    engine = await _engine()
    messages = [
        ChatMessage(role="user", content="weather?"),
        ChatMessage(role="tool", content="sunny", tool_name="get_weather"),
    ]
    pieces, _ = await _collect(engine, _job(tools=[WEATHER_TOOL], messages=messages))
    assert "".join(p.text for p in pieces) == REPLY


async def test_format_json_and_schema_give_valid_documents() -> None:
    engine = await _engine()
    pieces, _ = await _collect(engine, _job(format="json"))
    assert orjson.loads("".join(p.text for p in pieces)) == {"reply": REPLY}
    pieces, _ = await _collect(engine, _job(format=PYDANTIC_SCHEMA))
    assert len(pieces) > 1
    document = orjson.loads("".join(p.text for p in pieces))
    jsonschema.validate(document, PYDANTIC_SCHEMA)
    assert len(document["pets"]) == 2 and document["pets"][0]["color"] == "red"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "enum": ["only"]},
        {"const": 42},
        {"type": "integer", "minimum": 5},
        {"type": "number", "exclusiveMaximum": 1},
        {"type": "array", "items": {"type": "boolean"}, "maxItems": 0},
        {"type": "object"},
        {"oneOf": [{"type": "null"}, {"type": "integer"}]},
        {"type": ["null", "string"], "minLength": 12},
        {"properties": {"x": {"type": "integer"}}},  # no "required": every property
    ],
)
def test_schema_examples_validate(schema: dict[str, Any]) -> None:
    jsonschema.validate(example(schema), schema)


async def test_logprobs_are_deterministic_and_sorted() -> None:
    engine = await _engine()
    job = _job(logprobs=True, top_logprobs=3)
    first, _ = await _collect(engine, job)
    second, _ = await _collect(engine, job)
    assert first == second
    for piece in first:
        assert piece.logprobs is not None
        (logprob,) = piece.logprobs
        assert logprob.token == piece.text and logprob.logprob < 0
        assert logprob.bytes == list(piece.text.encode())
        top = logprob.top_logprobs or []
        assert len(top) == 3 and top[0].token == piece.text
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
    pieces, _ = await _collect(engine, _job())
    assert all(p.logprobs is None for p in pieces)


async def test_embeddings_are_stable_raw_vectors() -> None:
    engine = await _engine()
    job = _job(kind="embed", messages=[], inputs=["one two three", "four", "one two three"])
    result = await engine.embed(job)
    assert len(result.vectors) == 3 and all(len(v) == 8 for v in result.vectors)
    assert result.vectors[0] == result.vectors[2] != result.vectors[1]
    assert not math.isclose(math.hypot(*result.vectors[0]), 1.0)  # the worker normalises
    assert result.n_prompt_tokens == 7
    with pytest.raises(EngineFailure):
        await engine.embed(job.model_copy(update={"model": "n:1"}))


async def test_inputs_longer_than_the_context_are_refused_without_shift_or_truncation() -> None:
    engine = await _engine()
    await engine.load("n:1", LoadOptions(num_ctx=8))
    long = "word " * 9
    for flags in ({"shift": False}, {"truncate": False}):
        with pytest.raises(InvalidRequest, match=r"^the prompt is longer than the context"):
            await _collect(engine, _job(model="n:1", prompt=long, kind="generate", **flags))
    pieces, _ = await _collect(engine, _job(model="n:1", prompt=long, kind="generate"))
    assert pieces  # shifted/truncated by default
    embed = _job(model="n:1", kind="embed", inputs=["short", long])
    assert len((await engine.embed(embed)).vectors) == 2
    with pytest.raises(InvalidRequest, match=r"^the input length exceeds the context length$"):
        await engine.embed(embed.model_copy(update={"truncate": False}))
