"""``keep_alive`` values as Ollama reads them (``api.Duration``), in seconds.

A JSON number is seconds; a string is a Go duration (``"5m"``, ``"1h30m"``, ``"300ms"``);
anything negative means forever (``FOREVER``). In a request a bare number in a string
(other than ``"0"``) is an error, as in Ollama; the ``HERD_KEEP_ALIVE`` setting accepts it,
like ``OLLAMA_KEEP_ALIVE``.
"""

from __future__ import annotations

import math
import re

from shared.errors import InvalidRequest

FOREVER = math.inf

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration``, in seconds; raises ``ValueError`` with Go's message."""
    body = text
    sign = 1.0
    if body[:1] in "+-" and body:
        sign, body = (-1.0 if body[0] == "-" else 1.0), body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    while pos < len(body):
        match = _PART.match(body, pos)
        if match is None:
            if re.fullmatch(r"\d+\.?\d*|\.\d+", body[pos:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def keep_alive_seconds(value: object, *, setting: bool = False) -> float | None:
    """Seconds a model stays loaded once idle (``FOREVER`` for negative); None if absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        if setting and re.fullmatch(r"[+-]?\d+", value.strip()):
            seconds = float(value)
        else:
            try:
                seconds = parse_go_duration(value.strip())
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
    else:
        raise InvalidRequest(f"Unsupported type: '{type(value).__name__}'")
    return FOREVER if seconds < 0 else seconds
