"""The loosely typed request fields that Ollama decodes with its own texts: ``options``
(``api.Options.FromMap``), ``format``, ``think``, ``keep_alive`` and the base64 of
``images``. Pure functions; ``api.requests`` calls them in Ollama's order.

Two differences are kept on purpose: a mistyped option, and a ``format`` that is neither
``"json"`` nor an object, are 400s here; Ollama lets them surface from the scheduler or the
runner as 500s, although they are the client's errors (same texts).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson

from api import gofmt
from shared import thinking
from shared.durations import keep_alive_seconds
from shared.errors import InvalidRequest
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


#: The most repetitions a ``format`` schema may ask for (``minItems``, ``maxItems``,
#: ``minLength``, ``maxLength``, ``{m,n}`` in a ``pattern``): llama.cpp's grammar parser
#: refuses more (its MAX_REPETITION_THRESHOLD), and llama-cpp-python's converter writes
#: each one out (``maxItems: 10**9`` would build gigabytes of grammar on the worker).
MAX_REPETITIONS = 2000
_REPEATED = ("minItems", "maxItems", "minLength", "maxLength")
_BRACES = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def _too_many(count: object) -> bool:
    if isinstance(count, bool):
        return False
    if isinstance(count, str):  # digits of a pattern's {m,n}
        return len(count) > len(str(MAX_REPETITIONS)) or int(count or 0) > MAX_REPETITIONS
    return isinstance(count, int | float) and count > MAX_REPETITIONS


def check_repetitions(schema: dict[str, Any]) -> None:
    """400 if ``schema`` asks for more than ``MAX_REPETITIONS`` of anything (a walk with a
    stack of its own: the body's depth is bounded, but no recursion is needed)."""
    stack: list[object] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key in _REPEATED:
            if _too_many(node.get(key)):
                raise InvalidRequest(
                    f"invalid format: {key} {node[key]} is more than the "
                    f"{MAX_REPETITIONS} repetitions a grammar allows"
                )
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for braces in _BRACES.finditer(pattern):
                if any(_too_many(count) for count in braces.groups() if count):
                    raise InvalidRequest(
                        "invalid format: a pattern repeats more than the "
                        f"{MAX_REPETITIONS} repetitions a grammar allows"
                    )
        stack.extend(node.values())


def parse_format(fmt: object) -> str | dict[str, Any] | None:
    """``"json"``, a JSON-schema object, or nothing (``""``/null); anything else (``false``,
    ``0``, ``[]``, ``"x"``) is a 400 in Ollama's words: its runner fails it as a 500. A
    schema asking for more than ``MAX_REPETITIONS`` of something is a 400 too."""
    if fmt is None or fmt == "":
        return None
    if isinstance(fmt, dict):
        check_repetitions(fmt)
        return fmt
    if fmt == "json":
        return fmt
    # Ollama quotes the raw JSON of the value
    raw = orjson.dumps(fmt).decode()
    raise InvalidRequest(
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
#: The first byte that is neither base64 nor a skipped newline: padding or an error.
_NOT_PLAIN = re.compile(rb"[^A-Za-z0-9+/\r\n]")


def base64_error_at(text: str) -> int | None:
    """Where Go's ``base64.StdEncoding`` fails on ``text`` (None: it decodes).

    Go skips ``\\r`` and ``\\n`` and reports the byte offset of the first bad input; the
    JSON decoder passes that on as ``illegal base64 data at input byte N``. Everything up
    to the first padding or bad byte is found by a regular expression (C speed: a 4 MiB
    image in milliseconds); Go's state machine runs from there on, for a few bytes.
    """
    src = text.encode()
    found = _NOT_PLAIN.search(src)
    pos = found.start() if found is not None else len(src)
    plain = pos - src.count(b"\r", 0, pos) - src.count(b"\n", 0, pos)
    return _go_base64_from(src, pos, plain % 4)


def _go_base64_from(src: bytes, pos: int, got: int) -> int | None:
    """Go's decoder loop, from ``pos`` with ``got`` bytes of the current quantum read."""
    size = len(src)
    newline = b"\r\n"
    while True:
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
        got = 0


def check_images(images: list[str] | None) -> list[str] | None:
    """Images must be plain base64 (no ``data:`` prefix), as Go decodes ``[]byte``."""
    for image in images or []:
        at = base64_error_at(image)
        if at is not None:
            raise InvalidRequest(f"illegal base64 data at input byte {at}")
    return images or None
