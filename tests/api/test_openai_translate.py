"""The /v1 translations on their own: OpenAI request → native body, native object → OpenAI."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from api import bodies
from api.openai import responses, translate
from api.openai.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from shared.errors import InvalidRequest

USER = {"role": "user", "content": "hi"}
PNG = base64.b64encode(b"\x89PNG fake").decode()


def chat(**fields: Any) -> dict[str, Any]:
    return translate.chat_request(
        ChatCompletionRequest.model_validate({"model": "m", "messages": [USER], **fields})
    )


def test_openai_defaults_override_the_models() -> None:
    body = chat()
    assert body["options"] == {"temperature": 1.0, "top_p": 1.0}
    assert body["stream"] is False
    assert "think" not in body and "format" not in body and "tools" not in body


def test_sampling_fields_become_options() -> None:
    body = chat(
        temperature=0.2,
        top_p=0.5,
        max_tokens=7,
        max_completion_tokens=99,  # max_tokens wins
        seed=42,
        stop=["a", 1, "b"],
        frequency_penalty=0.3,
        presence_penalty=0.4,
    )
    assert body["options"] == {
        "temperature": 0.2,
        "top_p": 0.5,
        "stop": ["a", "b"],  # chat drops items that are not strings
        "seed": 42,
        "frequency_penalty": 0.3,
        "presence_penalty": 0.4,
        "num_predict": 7,
    }
    assert chat(stop="x")["options"]["stop"] == ["x"]
    # OpenAI's name now (Ollama ignores it, and the answer ran unbounded)
    assert chat(max_completion_tokens=5)["options"]["num_predict"] == 5


@pytest.mark.parametrize(
    ("fields", "think"),
    [
        ({"reasoning_effort": "none"}, False),
        ({"reasoning_effort": "minimal"}, "low"),
        ({"reasoning_effort": "medium"}, "medium"),
        ({"reasoning_effort": "max"}, "max"),
        ({"reasoning_effort": "xhigh"}, "max"),
        ({"reasoning": {"effort": "ultra"}}, "max"),
        ({"reasoning": {"effort": "high"}, "reasoning_effort": "none"}, "high"),
    ],
)
def test_reasoning_effort_maps_to_think(fields: dict[str, Any], think: object) -> None:
    assert chat(**fields)["think"] == think


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert chat(response_format={"type": "json_object"})["format"] == "json"
    assert chat(response_format={"type": " JSON_SCHEMA ", "json_schema": {"schema": schema}})[
        "format"
    ] == (schema)
    assert "format" not in chat(response_format={"type": "text"})


def test_logprobs_and_tools_pass_through() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = chat(logprobs=True, top_logprobs=3, tools=tools)
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert body["tools"] == tools


def test_parts_become_one_message_each_and_images_lose_the_data_prefix() -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": f"data:;base64,{PNG}"},
    ]
    body = chat(messages=[{"role": "user", "content": content}])
    assert body["messages"] == [
        {"role": "user", "content": "look"},
        {"role": "user", "content": "", "images": [PNG]},
        {"role": "user", "content": "", "images": [PNG]},
    ]


def test_tool_round_trip_messages() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"c":1}'}}
    body = chat(
        messages=[
            USER,
            {"role": "assistant", "content": None, "tool_calls": [call], "reasoning": "hmm"},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "name": "explicit", "content": "x"},
        ]
    )
    assistant, result, named = body["messages"][1:]
    assert assistant == {
        "role": "assistant",
        "thinking": "hmm",
        "tool_calls": [
            {"id": "call_1", "function": {"name": "w", "arguments": {"c": 1}, "index": 0}}
        ],
    }
    assert result == {
        "role": "tool",
        "content": "sunny",
        "tool_name": "w",
        "tool_call_id": "call_1",
    }
    assert named["tool_name"] == "explicit"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "user", "content": None}, "invalid message content type: <nil>"),
        ({"role": "user", "content": {"a": 1}}, "invalid message content type: map"),
        ({"role": "user", "content": ["x"]}, "invalid message format"),
        ({"role": "user", "content": [{"type": "text", "text": 1}]}, "invalid message format"),
        ({"role": "user", "content": [{"type": "image_url"}]}, "invalid message format"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": "http://x/y.png"}]},
            "image URLs are not currently supported",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": "data:image/gif;base64,AA=="}],
            },
            "invalid image input",
        ),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": "data:;base64,%%%"}]},
            "invalid image input",
        ),
        (
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": ""}}]},
            "invalid tool call arguments",
        ),
    ],
)
def test_message_errors(message: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidRequest, match=error.replace("(", r"\(")):
        chat(messages=[message])


def test_completion_request() -> None:
    req = CompletionRequest.model_validate(
        {"model": "m", "prompt": "p", "suffix": "s", "stop": "x", "logprobs": 2, "top_p": 0}
    )
    body = translate.completion_request(req)
    assert body["options"] == {
        "temperature": 1.0,
        "top_p": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "stop": ["x"],
    }
    assert body["suffix"] == "s" and body["logprobs"] is True and body["top_logprobs"] == 2
    bad = CompletionRequest.model_validate({"model": "m", "stop": ["a", 2]})
    with pytest.raises(InvalidRequest, match="invalid type for 'stop' field: float64"):
        translate.completion_request(bad)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"input": []}, "invalid input"),
        ({"input": None}, "invalid input"),
        (
            {"input": "x", "encoding_format": "int8"},
            "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64'].",
        ),
    ],
)
def test_embedding_request_errors(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate.embed_request(EmbeddingRequest.model_validate({"model": "m", **fields}))
    assert caught.value.message == error


def test_embedding_request() -> None:
    req = EmbeddingRequest.model_validate({"model": "m", "input": "", "encoding_format": "BASE64"})
    assert translate.embed_request(req) == {"model": "m", "input": [""]}
    req = EmbeddingRequest.model_validate({"model": "m", "input": ["a", "b"], "dimensions": 4})
    assert translate.embed_request(req) == {"model": "m", "input": ["a", "b"], "dimensions": 4}


NATIVE_CALL = {"id": "call_9", "function": {"index": 1, "name": "w", "arguments": {"b": 2, "a": 1}}}


def test_chat_completion_from_the_aggregated_object() -> None:
    native = {
        "model": "M",
        "created_at": "2026-01-01T00:00:00.5Z",
        "message": {
            "role": "assistant",
            "content": "",
            "thinking": "t",
            "tool_calls": [NATIVE_CALL],
        },
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 3,
        "eval_count": 4,
        "logprobs": [{"token": "a", "logprob": -0.5}],
    }
    out = responses.chat_completion("chatcmpl-1", native)
    assert out["created"] == 1767225600 and out["model"] == "M"
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["logprobs"] == {"content": native["logprobs"]}
    assert choice["message"] == {
        "role": "assistant",
        "content": "",
        "reasoning": "t",
        "tool_calls": [
            {
                "id": "call_9",
                "index": 1,
                "type": "function",
                "function": {"name": "w", "arguments": '{"b":2,"a":1}'},  # key order kept
            }
        ],
    }
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def _native_chunk(done: bool = False, **message: Any) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "model": "m",
        "message": {"role": "assistant", "content": "", **message},
        "done": done,
    }
    if done:
        chunk.update(done_reason="stop", prompt_eval_count=1, eval_count=2)
    return chunk


def test_chat_chunks_split_thinking_and_mark_tool_calls() -> None:
    chunks = responses.ChatChunks("id", include_usage=True)
    first = chunks.feed(_native_chunk(thinking="hm"))
    assert [c["choices"][0]["delta"] for c in first] == [
        {"role": "assistant", "content": "", "reasoning": "hm"}
    ]
    mixed = chunks.feed(_native_chunk(thinking="so", tool_calls=[NATIVE_CALL]))
    assert [c["choices"][0]["delta"] for c in mixed] == [
        {"reasoning": "so"},
        {"content": "", "tool_calls": responses.tool_calls([NATIVE_CALL])},
    ]
    finish, usage = chunks.feed(_native_chunk(done=True))
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 3


def test_an_empty_stream_still_opens_with_the_role() -> None:
    chunks = responses.ChatChunks("id", include_usage=False)
    opening, finish = chunks.feed(_native_chunk(done=True))
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert finish["choices"][0]["finish_reason"] == "stop"


def test_completion_chunks_carry_zero_usage_until_the_end() -> None:
    chunks = responses.CompletionChunks("id", include_usage=True)
    (text,) = chunks.feed({"model": "m", "response": "ab", "done": False})
    assert text["choices"][0] == {"text": "ab", "index": 0, "finish_reason": None}
    assert text["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    last, usage = chunks.feed(
        {"model": "m", "response": "", "done": True, "done_reason": "length", "eval_count": 5}
    )
    assert last["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5


def test_completion_logprobs_use_the_legacy_shape() -> None:
    entries = [
        {"token": "He", "logprob": -0.1, "top_logprobs": [{"token": "He", "logprob": -0.1}]},
        {"token": "llo", "logprob": -0.2, "top_logprobs": []},
    ]
    assert responses.legacy_logprobs(entries, offset=3) == {
        "tokens": ["He", "llo"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"He": -0.1}, {}],
        "text_offset": [3, 5],
    }


def test_embedding_list_base64_is_little_endian_float32() -> None:
    vectors = [[0.5, -0.25, 1.0], [0.0, 0.125, -1.0]]
    native = {"embeddings": vectors, "prompt_eval_count": 6}
    as_float = responses.embedding_list("m", native, "float")
    assert [d["embedding"] for d in as_float["data"]] == vectors
    assert [d["index"] for d in as_float["data"]] == [0, 1]
    assert as_float["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    as_b64 = responses.embedding_list("m", native, "Base64")
    decoded = [list(struct.unpack("<3f", base64.b64decode(d["embedding"]))) for d in as_b64["data"]]
    assert decoded == vectors


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("llama3.2:latest", "library"),
        ("team/tiny:1", "team"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "bartowski"),
    ],
)
def test_model_owner_is_the_namespace(name: str, owner: str) -> None:
    assert responses.owner(name) == owner


def test_model_list_is_never_null() -> None:
    assert responses.model_list({"models": []}) == {"object": "list", "data": []}
    listed = responses.model_list(
        {"models": [{"name": "a:1", "model": "a:1", "modified_at": "2025-05-04T17:37:44-07:00"}]}
    )
    assert listed["data"] == [
        {"id": "a:1", "object": "model", "created": 1746405464, "owned_by": "library"}
    ]
    assert orjson.loads(orjson.dumps(listed)) == listed


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (
            ChatCompletionRequest,
            {
                "messages": [
                    {"role": "user", "content": "hi", "name": None, "tool_call_id": None},
                    {
                        "role": "assistant",
                        "content": None,
                        "reasoning": None,
                        "tool_calls": [
                            {"index": None, "function": {"name": "f", "arguments": "{}"}}
                        ],
                    },
                ],
                "stream": None,
                "top_logprobs": None,
                "stream_options": {"include_usage": None},
            },
        ),
        (
            CompletionRequest,
            {
                "prompt": "p",
                "stream": None,
                "suffix": None,
                "top_p": None,
                "frequency_penalty": None,
                "presence_penalty": None,
            },
        ),
        (EmbeddingRequest, {"input": "x", "dimensions": None, "encoding_format": None}),
    ],
)
def test_a_null_field_keeps_its_default_as_in_go(
    model: type[ChatCompletionRequest | CompletionRequest | EmbeddingRequest],
    fields: dict[str, Any],
) -> None:
    """The OpenAI SDK sends null for an argument passed as None; Go's decoder leaves the
    field at its zero value."""
    got = bodies.parse(orjson.dumps({"model": "m", **fields}), model)
    assert got == model.model_validate(_without_nulls({"model": "m", **fields}))


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
