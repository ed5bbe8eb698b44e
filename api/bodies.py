"""What a request body is, read as Ollama's Go decoder reads it: JSON bound to a request
model, with Go's decoder texts for a missing, malformed or mistyped body. Pure: no I/O.

``parse`` is the first thing a route does with a body; ``api.requests`` then checks the model
it returns in Ollama's order. The models keep Ollama's field names; loosely typed fields
(``format``, ``think``, ``keep_alive``, ``options``) are left as decoded, for those checks.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from api import gofmt
from shared.errors import InvalidRequest
from shared.messages import ChatMessage, ToolCall, ToolCallFunction

M = TypeVar("M", bound=BaseModel)

# -- reading a body -------------------------------------------------------------------

_GO_TYPES = {
    "string_type": "string",
    "bool_type": "bool",
    "int_type": "int",
    "float_type": "float64",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
}


#: Arrays and objects nest at most this deep in a body (``format`` and ``tools`` are free
#: JSON): deeper ones are a 400 before anything recurses into them (orjson encodes 255
#: levels at most, so a deeper ``format`` used to fail as a 500 when the job was sent).
MAX_DEPTH = 64


def parse(raw: bytes, model: type[M]) -> M:
    """A JSON body bound to ``model``, with Ollama's 400 texts for missing or bad bodies.

    Two refusals Ollama does not make: arrays and objects nested deeper than ``MAX_DEPTH``,
    and a key given twice in one object (Go and orjson take the last; a proxy or an
    audit log reading the first would see another request than the one served)."""
    if not raw.strip():
        raise InvalidRequest("missing request body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON: {exc}") from exc
    check_depth(data)
    check_unique_keys(raw)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {_kind(data)} into Go value of type api.{model.__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        # Go names the field path without list indexes (ChatRequest.messages.content)
        path = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        want = _GO_TYPES.get(error["type"], error["type"])
        raise InvalidRequest(
            f"json: cannot unmarshal {_kind(error.get('input'))} into Go struct field "
            f"{model.__name__}.{path} of type {want}"
        ) from exc


def check_depth(data: object, limit: int = MAX_DEPTH) -> None:
    """400 if arrays and objects nest deeper than ``limit`` (the body itself is level 1);
    a walk with a stack of its own, so no depth can exhaust Python's."""
    if not isinstance(data, dict | list):
        return
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, dict | list):
                if depth >= limit:
                    raise InvalidRequest(
                        f"exceeded max depth: arrays and objects nest at most {limit} levels"
                    )
                stack.append((child, depth + 1))


def _unique(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1 and len({key for key, _ in pairs}) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRequest(f"json: duplicate key {gofmt.quote(key)}")
            seen.add(key)


def check_unique_keys(raw: bytes) -> None:
    """400 if an object of ``raw`` (valid JSON, at most ``MAX_DEPTH`` deep) has a key twice;
    keys are compared as decoded (``"mod\\u0065l"`` is ``"model"``)."""
    if b"{" in raw:
        try:
            json.loads(raw, object_pairs_hook=_unique)
        except ValueError as exc:  # what orjson read, json should too: never a 500
            raise InvalidRequest(f"invalid JSON: {exc}") from exc


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


# -- the request models (Ollama's field names; loosely typed fields checked in api.requests)


class _Body(BaseModel):
    # unknown fields are ignored, never rejected (Ollama's decoder does the same)
    model_config = ConfigDict(extra="ignore")


class _Request(_Body):
    model: str = ""
    stream: StrictBool | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None
    think: Any = None
    truncate: StrictBool | None = None
    shift: StrictBool | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None

    @property
    def streaming(self) -> bool:
        # `stream` absent means true (a Go pointer)
        return self.stream is not False


class GenerateRequest(_Request):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[StrictInt] | None = None
    raw: StrictBool | None = None
    images: list[str] | None = None


class RequestFunction(_Body):
    index: StrictInt | None = None
    name: str | None = None
    arguments: Any = None


class RequestToolCall(_Body):
    id: str | None = None
    function: RequestFunction = Field(default_factory=RequestFunction)

    def wire(self) -> ToolCall:
        arguments = self.function.arguments
        if isinstance(arguments, str):  # tolerated: some clients send the JSON text
            try:
                arguments = orjson.loads(arguments) if arguments.strip() else {}
            except orjson.JSONDecodeError:
                arguments = None
        if arguments is not None and not isinstance(arguments, dict):
            raise InvalidRequest("tool call arguments must be a JSON object")
        function = ToolCallFunction(
            name=self.function.name or "",
            arguments=arguments or {},
            index=self.function.index or 0,
        )
        return ToolCall(id=self.id or "", function=function)


class ChatRequestMessage(_Body):
    role: str | None = None
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[RequestToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    def wire(self) -> ChatMessage:
        return ChatMessage(
            role=(self.role or "").lower(),  # Ollama lowercases roles on input
            content=self.content or "",
            images=self.images or None,
            thinking=self.thinking or None,
            tool_calls=[call.wire() for call in self.tool_calls] if self.tool_calls else None,
            tool_name=self.tool_name or None,
            tool_call_id=self.tool_call_id or None,
        )


class ChatRequest(_Request):
    messages: list[ChatRequestMessage] | None = None
    tools: list[dict[str, Any]] | None = None

    def wire_messages(self) -> list[ChatMessage]:
        return [m.wire() for m in self.messages or []]


class EmbedRequest(_Body):
    model: str = ""
    input: Any = None
    truncate: StrictBool | None = None
    dimensions: StrictInt | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


class EmbeddingRequest(_Body):
    """The legacy request: one ``prompt``, one vector back, not normalised."""

    model: str = ""
    prompt: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


class ShowRequest(_Body):
    model: str = ""
    name: str = ""  # deprecated spelling of ``model``
    verbose: StrictBool | None = None
    system: str | None = None
    options: dict[str, Any] | None = None


class CopyRequest(_Body):
    source: str = ""
    destination: str = ""


class DeleteRequest(_Body):
    model: str = ""
    name: str = ""  # deprecated spelling of ``model``


class RegistryRequest(_Body):
    """``/api/pull`` and ``/api/push`` (``username``/``password``: deprecated, ignored)."""

    model: str = ""
    name: str = ""  # deprecated spelling of ``model``
    insecure: StrictBool | None = None
    stream: StrictBool | None = None
