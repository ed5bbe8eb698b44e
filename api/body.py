"""Reading a JSON request body with Ollama's errors (400 for missing or malformed bodies)."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from shared.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)

_GO_TYPES = {
    "string_type": "string",
    "bool_type": "bool",
    "int_type": "int",
    "float_type": "float64",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
}


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("missing request body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON: {exc}") from exc
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
        field = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        want = _GO_TYPES.get(error["type"], error["type"])
        raise InvalidRequest(
            f"json: cannot unmarshal {_kind(error.get('input'))} into Go struct field "
            f"{model.__name__}.{field} of type {want}"
        ) from exc


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
