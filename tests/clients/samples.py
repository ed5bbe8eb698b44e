"""Requests the client tests share: short deterministic options, a tool, a schema."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field

SHORT = {"num_predict": 12, "temperature": 0, "seed": 7}


class City(BaseModel):
    name: str = Field(max_length=24)
    population: int


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "description": "The city's name."}},
        },
    },
}


def norm(vector: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))
