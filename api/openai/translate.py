"""OpenAI request → the native Ollama request body (``openai.FromChatRequest`` and friends).

The result is a plain dict shaped like an ``/api/chat``, ``/api/generate`` or
``/api/embed`` body; the routes validate it with the native models and run it through the
native checks (``api.requests``), so /v1 and /api cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from api.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Message,
    ToolCall,
)
from shared.errors import InvalidRequest

_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))
_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max"}
_EFFORTS |= {"xhigh": "max", "ultra": "max"}
ENCODINGS = ("float", "base64")


def go_type(value: object) -> str:
    """What Go's ``%T`` prints for a decoded JSON value (Ollama's error texts use it)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def chat_request(req: ChatCompletionRequest) -> dict[str, Any]:
    if not req.messages:
        raise InvalidRequest("[] is too short - 'messages'")
    body: dict[str, Any] = {
        "model": req.model,
        "messages": _messages(req.messages),
        "stream": req.stream,
        "options": _chat_options(req),
    }
    if req.tools:
        body["tools"] = req.tools
    fmt = _format(req)
    if fmt is not None:
        body["format"] = fmt
    think = _think(req)
    if think is not None:
        body["think"] = think
    if req.logprobs:
        body["logprobs"] = True
    if req.top_logprobs:
        body["top_logprobs"] = req.top_logprobs
    return body


def completion_request(req: CompletionRequest) -> dict[str, Any]:
    options: dict[str, Any] = {
        "temperature": 1.0 if req.temperature is None else req.temperature,
        # Ollama cannot tell an explicit 0 from an absent top_p here
        "top_p": req.top_p or 1.0,
        "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
    }
    stop = _stop(req.stop, strict=True)
    if stop:
        options["stop"] = stop
    if req.max_tokens is not None:
        options["num_predict"] = req.max_tokens
    if req.seed is not None:
        options["seed"] = req.seed
    body: dict[str, Any] = {
        "model": req.model,
        "prompt": req.prompt,
        "stream": req.stream,
        "options": options,
    }
    if req.suffix:
        body["suffix"] = req.suffix
    if req.logprobs is not None and req.logprobs > 0:
        body.update(logprobs=True, top_logprobs=req.logprobs)
    return body


def embed_request(req: EmbeddingRequest) -> dict[str, Any]:
    if req.encoding_format and req.encoding_format.lower() not in ENCODINGS:
        raise InvalidRequest(
            f"Invalid value for 'encoding_format' = {req.encoding_format}. "
            "Supported values: ['float', 'base64']."
        )
    inputs = [""] if req.input == "" else req.input
    if inputs is None or inputs == []:
        raise InvalidRequest("invalid input")
    body: dict[str, Any] = {"model": req.model, "input": inputs}
    if req.dimensions:
        body["dimensions"] = req.dimensions
    return body


def _chat_options(req: ChatCompletionRequest) -> dict[str, Any]:
    # OpenAI's defaults, not the model's: absent temperature and top_p mean 1.0
    options: dict[str, Any] = {
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
    }
    stop = _stop(req.stop, strict=False)
    if stop:
        options["stop"] = stop
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        value = getattr(req, key)
        if value is not None:
            options[key] = value
    limit = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    if limit is not None:
        options["num_predict"] = limit
    return options


def _stop(stop: object, *, strict: bool) -> list[str] | None:
    """A string or a list of strings; chat drops other items, completions refuse them."""
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list):
        return None
    stops: list[str] = []
    for item in stop:
        if isinstance(item, str):
            stops.append(item)
        elif strict:
            raise InvalidRequest(f"invalid type for 'stop' field: {go_type(item)}")
    return stops


def _format(req: ChatCompletionRequest) -> Any:
    if req.response_format is None:
        return None
    kind = req.response_format.type.strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema" and req.response_format.json_schema is not None:
        return req.response_format.json_schema.schema_
    return None


def _think(req: ChatCompletionRequest) -> bool | str | None:
    # ``reasoning.effort`` wins over ``reasoning_effort``, even when empty
    effort = req.reasoning.effort if req.reasoning is not None else req.reasoning_effort or ""
    if not effort:
        return None  # the model's default
    if effort == "none":
        return False
    if effort not in _EFFORTS:
        raise InvalidRequest(
            f'invalid reasoning value: {json.dumps(effort)} (must be "minimal", "low", '
            '"medium", "high", "xhigh", "ultra", "max", or "none")'
        )
    return _EFFORTS[effort]


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    native: list[dict[str, Any]] = []
    for msg in messages:
        tool_name = ""
        if msg.role.lower() == "tool":
            tool_name = msg.name or _tool_name(messages, msg.tool_call_id)
        extra = _compact(
            thinking=msg.reasoning,
            tool_calls=_tool_calls(msg.tool_calls),
            tool_name=tool_name,
            tool_call_id=msg.tool_call_id,
        )
        content = msg.content
        if isinstance(content, str):
            native.append({"role": msg.role, "content": content, **extra})
        elif isinstance(content, list):
            parts = [_part(msg.role, part) for part in content]
            if extra:
                # calls, tool name and reasoning belong on the message's last part (Ollama
                # keeps a tool result's name only with calls; keeping it always is harmless)
                if parts:
                    parts[-1].update(extra)
                else:
                    parts.append({"role": msg.role, **extra})
            native.extend(parts)
        elif msg.tool_calls is not None:
            # content may be null (or anything) only when the message carries tool calls
            native.append({"role": msg.role, **extra})
        else:
            raise InvalidRequest(f"invalid message content type: {go_type(content)}")
    return native


def _compact(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value}


def _tool_name(messages: list[Message], call_id: str) -> str:
    """The function an earlier assistant call ``call_id`` named (the last one wins)."""
    if call_id:
        for msg in reversed(messages):
            for call in msg.tool_calls or []:
                if call.id == call_id:
                    return call.function.name
    return ""


def _tool_calls(calls: list[ToolCall] | None) -> list[dict[str, Any]] | None:
    if not calls:
        return None
    native: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise InvalidRequest("invalid tool call arguments")
        function = {"name": call.function.name, "arguments": arguments, "index": index}
        native.append({"id": call.id, "function": function} if call.id else {"function": function})
    return native


def _part(role: str, part: object) -> dict[str, Any]:
    """One content part becomes its own native message with the same role (as Ollama)."""
    if not isinstance(part, dict):
        raise InvalidRequest("invalid message format")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest("invalid message format")
        return {"role": role, "content": text}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise InvalidRequest("invalid message format")
        return {"role": role, "content": "", "images": [_image(url)]}
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise InvalidRequest("invalid input_audio format")
        data = audio.get("data")
        if not isinstance(data, str):
            raise InvalidRequest("invalid input_audio format: missing data")
        if not _is_base64(data):
            raise InvalidRequest("invalid input_audio base64 data")
        return {"role": role, "content": "", "images": [data]}
    raise InvalidRequest("invalid message format")


def _image(url: str) -> str:
    """A data URL's base64 payload (what native ``images`` carry)."""
    if url.startswith(("http://", "https://")):
        raise InvalidRequest(
            "image URLs are not currently supported, please use base64 encoded data instead"
        )
    for prefix in ("data:;base64,", *_IMAGE_PREFIXES):
        if url.startswith(prefix):
            data = url.removeprefix(prefix)
            if _is_base64(data):
                return data
            break
    raise InvalidRequest("invalid image input")


def _is_base64(data: str) -> bool:
    try:
        base64.b64decode(data.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True
