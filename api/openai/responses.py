"""Native Ollama objects → OpenAI response objects (``openai.ToChatCompletion`` and friends),
and OpenAI's error shape for everything under ``/v1`` (Ollama's ``openai.NewError``).

The inputs are exactly what ``/api/chat``, ``/api/generate``, ``/api/embed`` and
``/api/tags`` send; the streaming translators keep the little state a stream needs (the
role goes on the first chunk only, a tool call turns ``stop`` into ``tool_calls``).
"""

from __future__ import annotations

import base64
import secrets
import struct
import time
from datetime import datetime
from typing import Any

import orjson
from fastapi.responses import JSONResponse

from shared.errors import HerdError

FINGERPRINT = "fp_ollama"

_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "api_error"),
            "param": None,
            "code": None,
        }
    }


def error_response(exc: HerdError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.status, exc.message), status_code=exc.status, headers=exc.headers
    )


def new_id(prefix: str) -> str:
    # Ollama draws from 0..998, so concurrent requests collide; a wider range does not
    return f"{prefix}-{secrets.randbelow(10**12)}"


def unix(timestamp: object) -> int:
    """An RFC 3339 time (Ollama's ``created_at``/``modified_at``) as Unix seconds."""
    if isinstance(timestamp, str) and timestamp:
        try:
            return int(datetime.fromisoformat(timestamp).timestamp())
        except ValueError:
            pass
    return int(time.time())


def usage(native: dict[str, Any]) -> dict[str, int]:
    prompt, completion = native.get("prompt_eval_count", 0), native.get("eval_count", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Native calls (``arguments`` an object) → OpenAI's (``arguments`` a JSON string)."""
    return [
        {
            "id": call.get("id", ""),
            "index": call["function"].get("index", 0),
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": orjson.dumps(call["function"].get("arguments") or {}).decode(),
            },
        }
        for call in calls
    ]


def _finish(reason: str | None, *, tool_called: bool) -> str | None:
    if reason == "stop" and tool_called:
        return "tool_calls"
    return reason or None


def chat_completion(completion_id: str, native: dict[str, Any]) -> dict[str, Any]:
    """The ``stream: false`` answer, from the native aggregated chat object."""
    message = native.get("message") or {}
    calls = tool_calls(message.get("tool_calls") or [])
    out: dict[str, Any] = {"role": message.get("role", "assistant")}
    out["content"] = message.get("content", "")
    if message.get("thinking"):
        out["reasoning"] = message["thinking"]
    if calls:
        out["tool_calls"] = calls
    choice: dict[str, Any] = {
        "index": 0,
        "message": out,
        "finish_reason": _finish(native.get("done_reason"), tool_called=bool(calls)),
    }
    if native.get("logprobs"):
        choice["logprobs"] = {"content": native["logprobs"]}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": unix(native.get("created_at")),
        "model": native.get("model", ""),
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": usage(native),
    }


class ChatChunks:
    """Native chat chunks → ``chat.completion.chunk`` objects, for one stream."""

    def __init__(self, completion_id: str, *, include_usage: bool) -> None:
        self._id = completion_id
        self._include_usage = include_usage
        self._created = int(time.time())  # one value for every chunk, as OpenAI does
        self._started = False
        self._tool_called = False

    def _chunk(
        self,
        model: str,
        delta: dict[str, Any],
        *,
        logprobs: list[Any] | None = None,
        finish: str | None = None,
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
        }

    def feed(self, native: dict[str, Any]) -> list[dict[str, Any]]:
        model = native.get("model", "")
        message = native.get("message") or {}
        content: str = message.get("content", "")
        thinking: str = message.get("thinking", "")
        calls = tool_calls(message.get("tool_calls") or [])
        logprobs = native.get("logprobs")
        done = bool(native.get("done"))
        out: list[dict[str, Any]] = []
        # the metrics-only final object is not an (empty) content chunk, unless it is the
        # only one: then it still opens the stream with the role
        trailer = done and self._started and not (content or thinking or calls or logprobs)
        if not trailer:
            role = {} if self._started else {"role": "assistant"}
            if thinking and (content or calls):
                # reasoning first, then the content or calls, as two chunks
                out.append(self._chunk(model, {**role, "reasoning": thinking}, logprobs=logprobs))
                out.append(self._chunk(model, _delta({"content": content}, calls)))
            else:
                delta = _delta({**role, "content": content, "reasoning": thinking}, calls)
                out.append(self._chunk(model, delta, logprobs=logprobs))
            self._started = True
            self._tool_called = self._tool_called or bool(calls)
        if done:
            reason = _finish(native.get("done_reason") or "stop", tool_called=self._tool_called)
            finish = self._chunk(model, {}, finish=reason)
            out.append(finish)
            if self._include_usage:
                out.append({**finish, "choices": [], "usage": usage(native)})
        return out


def _delta(fields: dict[str, Any], calls: list[dict[str, Any]]) -> dict[str, Any]:
    if not fields.get("reasoning"):
        fields.pop("reasoning", None)
    if calls:
        fields["tool_calls"] = calls
    return fields


def completion(completion_id: str, native: dict[str, Any]) -> dict[str, Any]:
    """The ``stream: false`` answer of /v1/completions, from the native generate object."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": unix(native.get("created_at")),
        "model": native.get("model", ""),
        "system_fingerprint": FINGERPRINT,
        "choices": [_text_choice(native, offset=0)],
        "usage": usage(native),
    }


def _text_choice(native: dict[str, Any], *, offset: int) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "text": native.get("response", ""),
        "index": 0,
        "finish_reason": native.get("done_reason") or None,
    }
    if native.get("logprobs"):
        choice["logprobs"] = legacy_logprobs(native["logprobs"], offset=offset)
    return choice


def legacy_logprobs(entries: list[dict[str, Any]], *, offset: int) -> dict[str, Any]:
    """Native logprobs in the completions API's own shape (Ollama drops them instead)."""
    offsets: list[int] = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [entry["token"] for entry in entries],
        "token_logprobs": [entry["logprob"] for entry in entries],
        "top_logprobs": [
            {top["token"]: top["logprob"] for top in entry.get("top_logprobs") or []}
            for entry in entries
        ],
        "text_offset": offsets,
    }


class CompletionChunks:
    """Native generate chunks → ``text_completion`` chunks, for one stream.

    As in Ollama, ``finish_reason`` rides on the last (empty) text chunk, and with
    ``include_usage`` every chunk carries a zero ``usage`` before the real one at the end.
    """

    def __init__(self, completion_id: str, *, include_usage: bool) -> None:
        self._id = completion_id
        self._include_usage = include_usage
        self._created = int(time.time())
        self._offset = 0

    def feed(self, native: dict[str, Any]) -> list[dict[str, Any]]:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "choices": [_text_choice(native, offset=self._offset)],
            "model": native.get("model", ""),
            "system_fingerprint": FINGERPRINT,
        }
        self._offset += len(native.get("response", ""))
        if not self._include_usage:
            return [chunk]
        chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        if not native.get("done"):
            return [chunk]
        return [chunk, {**chunk, "choices": [], "usage": usage(native)}]


def embedding_list(model: str, native: dict[str, Any], encoding_format: str) -> dict[str, Any]:
    """The native /api/embed answer as OpenAI's list; base64 is little-endian float32."""
    as_base64 = encoding_format.lower() == "base64"
    data = [
        {
            "object": "embedding",
            "embedding": _base64(vector) if as_base64 else vector,
            "index": index,
        }
        for index, vector in enumerate(native.get("embeddings") or [])
    ]
    tokens = native.get("prompt_eval_count", 0)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def owner(name: str) -> str:
    """The namespace of a model name: ``library`` for plain names (``types/model``)."""
    parts = name.split("/")  # host/namespace/model:tag; the tag is in the last part
    return parts[-2] if len(parts) > 1 else "library"


def model_object(name: str, modified_at: object) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": unix(modified_at), "owned_by": owner(name)}


def model_list(tags: dict[str, Any]) -> dict[str, Any]:
    """The /api/tags answer as OpenAI's list; ``data`` is ``[]`` when empty (Ollama: null)."""
    models = tags.get("models") or []
    return {
        "object": "list",
        "data": [model_object(m.get("model") or m["name"], m.get("modified_at")) for m in models],
    }
