"""OpenAI request bodies as Ollama's ``openai`` package binds them.

Strict types, as Go's decoder has (``"stream": "yes"`` is a 400, not ``True``); a field
given as ``null`` keeps its default, as Go leaves it at its zero value (the OpenAI SDK sends
``null`` for an argument passed as ``None``); unknown fields (``n``, ``tool_choice``,
``user``...) are ignored.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request

from api import bodies, offload
from shared.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class StreamOptions(_Body):
    include_usage: bool = False


class ToolCallFunction(_Body):
    name: str = ""
    #: A JSON-object *string* (OpenAI's wire form); decoded when translated.
    arguments: str = ""


class ToolCall(_Body):
    id: str = ""
    index: int = 0
    type: str = ""
    function: ToolCallFunction = Field(default_factory=ToolCallFunction)


class Message(_Body):
    role: str = ""
    #: A string, a list of parts, or null (only with ``tool_calls``).
    content: Any = None
    reasoning: str = ""
    tool_calls: list[ToolCall] | None = None
    name: str = ""
    tool_call_id: str = ""


class JsonSchema(_Body):
    schema_: Any = Field(default=None, alias="schema")


class ResponseFormat(_Body):
    type: str = ""
    json_schema: JsonSchema | None = None


class Reasoning(_Body):
    effort: str = ""


class ChatCompletionRequest(_Body):
    model: str = ""
    messages: list[Message] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    #: OpenAI's name for ``max_tokens`` now (Ollama ignores it: the answer ran unbounded).
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: Any = None
    temperature: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_p: float | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning: Reasoning | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: int = 0

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Body):
    model: str = ""
    #: A string only; arrays of prompts or tokens are a bind error (as in Ollama).
    prompt: str = ""
    suffix: str = ""
    max_tokens: int | None = None
    seed: int | None = None
    stop: Any = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    #: The number of top alternatives per token (0 or absent: no logprobs).
    logprobs: int | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class EmbeddingRequest(_Body):
    model: str = ""
    input: Any = None
    dimensions: int = 0
    encoding_format: str = ""


async def parse(request: Request, model: type[M]) -> M:
    """The body bound to ``model``; an empty body is Go's ``EOF``, the rest as natively."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("EOF")
    return await offload.off_loop(len(raw), bodies.parse, raw, model)
