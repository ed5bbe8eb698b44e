"""The loosely typed request fields that Ollama decodes with its own texts: ``options``
(``api.Options.FromMap``), ``format``, ``think``, ``keep_alive`` and the base64 of
``images``. Pure functions; ``api.requests`` calls them in Ollama's order.

One difference is kept on purpose: a mistyped option is a 400 here; Ollama lets it surface
from the scheduler as a 500, although it is the client's error.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from api import gofmt
from shared import thinking
from shared.durations import keep_alive_seconds
from shared.errors import EngineFailure, InvalidRequest
from shared.messages import LoadOptions, SamplingOptions

OptionType = Literal["integer", "float32", "boolean", "array"]

#: Options fixed when a model is loaded (a change reloads it) -> their Go type.
LOAD_OPTIONS: dict[str, OptionType] = {
    "num_ctx": "integer",
    "num_batch": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",
    "use_mmap": "boolean",
    "num_thread": "integer",
    # type-checked like Ollama, but Herd has no draft models: not passed on
    "draft_num_predict": "integer",
}
#: Options applied per request by the sampler.
SAMPLING_OPTIONS: dict[str, OptionType] = {
    "num_keep": "integer",
    "seed": "integer",
    "num_predict": "integer",
    "top_k": "integer",
    "top_p": "float32",
    "min_p": "float32",
    "typical_p": "float32",
    "repeat_last_n": "integer",
    "temperature": "float32",
    "repeat_penalty": "float32",
    "presence_penalty": "float32",
    "frequency_penalty": "float32",
    "stop": "array",
}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _option(key: str, kind: OptionType, raw: object) -> object:
    """One value, converted as ``FromMap`` does (an integer option truncates a float)."""
    number = raw if isinstance(raw, int | float) and not isinstance(raw, bool) else None
    if kind == "integer":
        if number is None:
            raise InvalidRequest(f'option "{key}" must be of type integer')
        # llama.cpp takes 32-bit integers; Go would wrap a huge value, never fail
        if number != number:  # NaN
            raise InvalidRequest(f'option "{key}" must be of type integer')
        return int(min(max(number, INT32_MIN), INT32_MAX))
    if kind == "float32":
        if number is None:
            raise InvalidRequest(f'option "{key}" must be of type float32')
        return float(number)
    if kind == "boolean":
        if not isinstance(raw, bool):
            raise InvalidRequest(f'option "{key}" must be of type boolean')
        return raw
    if not isinstance(raw, list):
        raise InvalidRequest(f'option "{key}" must be of type array')
    if not all(isinstance(item, str) for item in raw):
        raise InvalidRequest(f'option "{key}" must be of an array of strings')
    return list(raw)


def parse_options(options: dict[str, Any] | None) -> tuple[SamplingOptions, LoadOptions]:
    """Known keys type-checked and split by when they apply; unknown keys ignored, as are
    the legacy ones clients still declare (``numa``, ``mirostat``, ``tfs_z``...)."""
    sampling: dict[str, Any] = {}
    load: dict[str, Any] = {}
    for key, raw in (options or {}).items():
        if raw is None:
            continue
        if key in SAMPLING_OPTIONS:
            sampling[key] = _option(key, SAMPLING_OPTIONS[key], raw)
        elif key in LOAD_OPTIONS:
            load[key] = _option(key, LOAD_OPTIONS[key], raw)
    load.pop("draft_num_predict", None)
    return SamplingOptions(**sampling), LoadOptions(**load)


def parse_think(think: object) -> thinking.Think:
    """``api.ThinkValue``: a boolean or a level (``shared.thinking`` says what it means)."""
    if think is None or isinstance(think, bool):
        return think
    if isinstance(think, str):
        if think not in thinking.LEVELS:
            raise InvalidRequest(
                f"invalid think value: {gofmt.quote(think)} "
                '(must be "high", "medium", "low", "max", true, or false)'
            )
        return think
    raise InvalidRequest(
        'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


def parse_format(fmt: object) -> str | dict[str, Any] | None:
    """``"json"``, a JSON-schema object, or nothing (``""``/null); anything else fails as the
    runner fails it (a 500, in Ollama's words)."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json" or isinstance(fmt, dict):
        return fmt
    # Ollama quotes the raw JSON of the value
    raw = orjson.dumps(fmt).decode()
    raise EngineFailure(
        f'invalid format: {gofmt.quote(raw)}; expected "json" or a valid JSON Schema object'
    )


def _go_type(obj: object) -> str:
    # what Go's reflect.TypeOf prints for a decoded JSON value
    if isinstance(obj, list):
        return "[]interface {}"
    if isinstance(obj, dict):
        return "map[string]interface {}"
    return type(obj).__name__


def keep_alive(value: object) -> float | None:
    """Seconds for the job's ``keep_alive_s``: -1 forever, None when not given."""
    if isinstance(value, list | dict):
        raise InvalidRequest(f"Unsupported type: '{_go_type(value)}'")
    seconds = keep_alive_seconds(value)
    if seconds is None:
        return None
    return -1.0 if seconds == float("inf") else seconds


_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def base64_error_at(text: str) -> int | None:
    """Where Go's ``base64.StdEncoding`` fails on ``text`` (None: it decodes).

    Go skips ``\\r`` and ``\\n`` and reports the byte offset of the first bad input; the
    JSON decoder passes that on as ``illegal base64 data at input byte N``.
    """
    src = text.encode()
    size, pos = len(src), 0
    newline = b"\r\n"
    while True:
        got = 0
        while got < 4:
            if pos == size:
                return None if got == 0 else pos - got
            byte = src[pos]
            pos += 1
            if byte in _B64:
                got += 1
                continue
            if byte in newline:
                continue
            if byte != ord("=") or got < 2:
                return pos - 1
            if got == 2:  # "==" needed
                while pos < size and src[pos] in newline:
                    pos += 1
                if pos == size:
                    return size
                if src[pos] != ord("="):
                    return pos - 1
                pos += 1
            while pos < size and src[pos] in newline:
                pos += 1
            return pos if pos < size else None


def check_images(images: list[str] | None) -> list[str] | None:
    """Images must be plain base64 (no ``data:`` prefix), as Go decodes ``[]byte``."""
    for image in images or []:
        at = base64_error_at(image)
        if at is not None:
            raise InvalidRequest(f"illegal base64 data at input byte {at}")
    return images or None
