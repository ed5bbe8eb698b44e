"""``generate_call`` and ``chat_call``: every request field lands in the job, and faults
get Ollama's texts in Ollama's order. The model is looked up as the routes look it up
(real Redis; adverts written as workers write them); unloads run through ``api.control``."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from redis.asyncio import Redis

from api import control, responses
from api.bodies import ChatRequest, GenerateRequest
from api.requests import (
    Call,
    Load,
    Unload,
    chat_call,
    generate_call,
)
from api.state import AppState
from shared import keys
from shared.errors import HerdError, InvalidRequest, ModelNotFound
from shared.messages import ControlMessage, LoadedModel
from tests.api.conftest import advert, advertise

IMAGE = base64.b64encode(b"\x89PNG fake image").decode()


@pytest.fixture(autouse=True)
async def models(redis: Redis) -> None:
    await advertise(
        redis,
        [
            advert("full:latest"),
            advert("plain:latest", ["completion"]),
            advert("embedder:latest", ["embedding"]),
        ],
    )


async def _checked_generate(state: AppState, body: GenerateRequest) -> Call | Load | Unload:
    return generate_call(body, await state.aliases.lookup(body.model))


async def _checked_chat(state: AppState, body: ChatRequest) -> Call | Load | Unload:
    return chat_call(body, await state.aliases.lookup(body.model))


async def _generate(state: AppState, **fields: Any) -> Call:
    call = await _checked_generate(state, GenerateRequest.model_validate(fields))
    assert isinstance(call, Call)
    return call


async def _chat(state: AppState, **fields: Any) -> Call:
    call = await _checked_chat(state, ChatRequest.model_validate(fields))
    assert isinstance(call, Call)
    return call


async def test_every_generate_field_reaches_the_job(state: AppState) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    call = await _generate(
        state,
        model="Full",
        prompt="p",
        suffix="s",
        system="sys",
        template="{{ .Prompt }}",
        context=[1, 2],
        images=[IMAGE],
        format=schema,
        options={"temperature": 0.5, "num_ctx": 512, "top_k": 3.9, "use_mmap": False},
        keep_alive="1m",
        think="high",
        truncate=False,
        shift=False,
        logprobs=True,
        top_logprobs=5,
    )
    job = call.job
    assert (call.kind, call.model, call.name) == ("generate", "Full", "full:latest")
    assert (job.kind, job.model, job.prompt, job.suffix) == ("generate", "full:latest", "p", "s")
    assert (job.system, job.template, job.context, job.images) == (
        "sys",
        "{{ .Prompt }}",
        [1, 2],
        [IMAGE],
    )
    assert job.format == schema and job.think == "high"
    assert (job.truncate, job.shift, job.logprobs, job.top_logprobs) == (False, False, True, 5)
    assert job.keep_alive_s == 60
    assert job.options.temperature == 0.5 and job.options.top_k == 3
    assert job.load.num_ctx == 512 and job.load.use_mmap is False
    assert job.options.model_dump(exclude_none=True) == {"temperature": 0.5, "top_k": 3}


async def test_generate_defaults_leave_choices_to_the_worker(state: AppState) -> None:
    job = (await _generate(state, model="full", prompt="p", system="", format="")).job
    assert job.system is None and job.template is None and job.format is None
    assert job.think is None and job.keep_alive_s is None and job.truncate is None
    assert job.raw is False and job.images is None


async def test_keep_alive_negative_is_forever_on_the_wire(state: AppState) -> None:
    assert (await _generate(state, model="full", prompt="p", keep_alive=-1)).job.keep_alive_s == -1
    job = (await _generate(state, model="full", prompt="p", keep_alive="-5m")).job
    assert job.keep_alive_s == -1


async def test_every_chat_field_reaches_the_job(state: AppState) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    call = await _chat(
        state,
        model="full:latest",
        messages=[
            {"role": "SYSTEM", "content": "be brief"},
            {"role": "user", "content": "hi", "images": [IMAGE]},
            {
                "role": "assistant",
                "thinking": "hmm",
                "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1, "a": 2}}}],
            },
            {"role": "tool", "content": "42", "tool_name": "f", "tool_call_id": "call_1"},
        ],
        tools=[tool],
        format="json",
        think=True,
        options={"stop": ["\n"], "num_predict": 5},
        keep_alive=0,
    )
    job = call.job
    assert job.kind == "chat" and job.tools == [tool] and job.format == "json"
    assert job.think is True and job.keep_alive_s == 0
    assert job.options.stop == ["\n"] and job.options.num_predict == 5
    system, user, assistant, result = job.messages
    assert system.role == "system"
    assert user.images == [IMAGE]
    assert assistant.content == "" and assistant.thinking == "hmm"
    assert assistant.tool_calls is not None
    assert list(assistant.tool_calls[0].function.arguments) == ["x", "a"]  # order kept
    assert (result.tool_name, result.tool_call_id) == ("f", "call_1")


async def test_empty_tools_need_no_capability(state: AppState) -> None:
    call = await _chat(state, model="plain", messages=[{"role": "user", "content": "x"}], tools=[])
    assert call.job.tools is None


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"prompt": "x"}, ModelNotFound, "model '' not found"),
        ({"model": "nope", "prompt": "x"}, ModelNotFound, "model 'nope' not found"),
        ({"model": "a/b/c/d", "prompt": "x"}, InvalidRequest, "invalid model name"),
        (
            {"model": "full", "prompt": "x", "raw": True, "context": [1]},
            InvalidRequest,
            "raw mode does not support template, system, or context",
        ),
        (
            {"model": "embedder", "prompt": "x"},
            InvalidRequest,
            '"embedder" does not support generate',
        ),
        (
            {"model": "plain", "prompt": "x", "suffix": "y"},
            InvalidRequest,
            "registry.ollama.ai/library/plain:latest does not support insert",
        ),
        (
            {"model": "plain", "prompt": "x", "images": [IMAGE]},
            InvalidRequest,
            "registry.ollama.ai/library/plain:latest does not support vision",
        ),
        (
            {"model": "plain", "prompt": "x", "suffix": "y", "images": [IMAGE]},
            InvalidRequest,
            "registry.ollama.ai/library/plain:latest does not support insert\nvision",
        ),
        (
            {"model": "plain", "prompt": "x", "think": "low"},
            InvalidRequest,
            '"plain" does not support thinking',
        ),
        (
            {"model": "full", "prompt": "x", "think": "extreme"},
            InvalidRequest,
            'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, '
            "or false)",
        ),
        (
            {"model": "full", "prompt": "x", "think": 1},
            InvalidRequest,
            'think must be a boolean or string ("high", "medium", "low", "max", true, or false)',
        ),
        (
            {"model": "full", "prompt": "x", "top_logprobs": 21},
            InvalidRequest,
            "top_logprobs must be between 0 and 20",
        ),
        (
            {"model": "full", "prompt": "x", "keep_alive": "300"},
            InvalidRequest,
            'time: missing unit in duration "300"',
        ),
        (
            {"model": "full", "prompt": "x", "keep_alive": [1]},
            InvalidRequest,
            "Unsupported type: '[]interface {}'",
        ),
        (
            {"model": "full", "prompt": "x", "images": ["data:image/png;base64,AAAA"]},
            InvalidRequest,
            "illegal base64 data at input byte 4",
        ),
        (
            {"model": "full", "prompt": "x", "options": {"num_ctx": "big"}},
            InvalidRequest,
            'option "num_ctx" must be of type integer',
        ),
        (
            {"model": "full", "prompt": "x", "format": "xml"},
            InvalidRequest,
            'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object',
        ),
    ],
)
async def test_generate_errors(
    state: AppState, fields: dict[str, Any], error: type[HerdError], message: str
) -> None:
    with pytest.raises(error) as info:
        await _checked_generate(state, GenerateRequest.model_validate(fields))
    assert info.value.message == message
    assert type(info.value) is error


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"messages": []}, InvalidRequest, "model is required"),
        ({"model": "nope"}, ModelNotFound, "model 'nope' not found"),
        ({"model": "embedder", "messages": []}, InvalidRequest, '"embedder" does not support chat'),
        (
            {"model": "plain", "messages": [{"role": "user"}], "tools": [{"type": "function"}]},
            InvalidRequest,
            "registry.ollama.ai/library/plain:latest does not support tools",
        ),
        (
            {"model": "plain", "messages": [{"role": "user", "images": [IMAGE]}]},
            InvalidRequest,
            "registry.ollama.ai/library/plain:latest does not support vision",
        ),
        (
            {"model": "full", "messages": [{"role": "user", "images": ["abc"]}]},
            InvalidRequest,
            "illegal base64 data at input byte 0",
        ),
        (
            {"model": "plain", "messages": [], "think": True},
            InvalidRequest,
            '"plain" does not support thinking',
        ),
        (
            {"model": "full", "messages": [{"role": "user"}], "top_logprobs": -1},
            InvalidRequest,
            "top_logprobs must be between 0 and 20",
        ),
    ],
)
async def test_chat_errors(
    state: AppState, fields: dict[str, Any], error: type[HerdError], message: str
) -> None:
    with pytest.raises(error) as info:
        await _checked_chat(state, ChatRequest.model_validate(fields))
    assert info.value.message == message


async def test_checks_run_in_ollamas_order(state: AppState) -> None:
    # a bad think value is a decoding error: it wins over a missing model
    with pytest.raises(InvalidRequest, match="invalid think value"):
        await _checked_generate(state, GenerateRequest(model="nope", think="x"))
    # thinking is checked before capabilities, capabilities before options
    body = GenerateRequest(model="embedder", prompt="x", think=True, options={"top_k": "x"})
    with pytest.raises(InvalidRequest, match="does not support thinking"):
        await _checked_generate(state, body)
    body = GenerateRequest(model="embedder", prompt="x", options={"top_k": "x"})
    with pytest.raises(InvalidRequest, match="does not support generate"):
        await _checked_generate(state, body)
    # the unload check comes before capabilities: an embedding model can be unloaded
    action = await _checked_generate(state, GenerateRequest(model="embedder", keep_alive=0))
    assert isinstance(action, Unload)
    assert responses.control_answer(action)["done_reason"] == "unload"


async def test_think_false_is_fine_without_the_capability(state: AppState) -> None:
    call = await _generate(state, model="plain", prompt="x", think=False)
    assert call.job.think is False


async def test_unload_asks_only_the_workers_that_hold_the_model(
    state: AppState, redis: Redis
) -> None:
    holding = LoadedModel(name="plain:latest", size_bytes=1, expires_at="2026-01-01T00:00:00Z")
    await advertise(redis, [advert("plain:latest")], worker_id="w2", loaded=[holding])
    await advertise(redis, [advert("plain:latest")], worker_id="w3")
    action = await _checked_chat(state, ChatRequest(model="Plain", keep_alive="0s"))
    assert isinstance(action, Unload)
    assert await control.unload(state.redis, state.registry, action) == 1
    answer = responses.control_answer(action)
    assert answer == {
        "model": "Plain",
        "created_at": answer["created_at"],
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "unload",
    }
    entries = await redis.xrange(keys.control_stream("w2"))
    assert [ControlMessage.from_fields(f) for _, f in entries] == [
        ControlMessage(action="unload", model="plain:latest")
    ]
    assert await redis.xlen(keys.control_stream("w3")) == 0
    assert await redis.xlen(keys.control_stream("w1")) == 0


async def test_aliases_run_on_the_source_models_stream(state: AppState, redis: Redis) -> None:
    # through the pod's aliases, which see their own changes at once
    assert await state.aliases.copy("plain:latest", "mine:latest")
    call = await _generate(state, model="mine", prompt="x")
    assert call.name == "plain:latest" and call.job.model == "plain:latest"
    assert call.model == "mine"
    assert await state.aliases.delete("full:latest")
    with pytest.raises(ModelNotFound, match="model 'full' not found"):
        await _generate(state, model="full", prompt="x")


def test_the_checks_are_pure_and_say_what_to_do_without_a_job_to_stream() -> None:
    # no state, no Redis: the looked-up advert is an argument
    served = advert("full:latest")
    body = GenerateRequest(model="Full", keep_alive="5m", options={"num_ctx": 64})
    load = generate_call(body, served)
    assert isinstance(load, Load) and (load.route, load.model) == ("generate", "Full")
    job = load.job
    assert (job.kind, job.model, job.keep_alive_s, job.load.num_ctx) == (
        "load",
        "full:latest",
        300,
        64,
    )
    unload = chat_call(ChatRequest(model="Full", keep_alive=0), served)
    assert unload == Unload(route="chat", model="Full", name="full:latest")
    with pytest.raises(ModelNotFound, match="model 'Full' not found"):
        chat_call(ChatRequest(model="Full", messages=[{"role": "user"}]), None)
