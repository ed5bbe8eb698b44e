"""Tool calls in a model's streamed text, in the formats models write them:

- ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` (Qwen, Hermes; several in a row);
- ``[TOOL_CALLS][{…}, …]`` and ``[TOOL_CALLS]name[ARGS]{…}`` (Mistral);
- an answer that *is* a bare JSON object or array of ``{"name": …, "arguments"|"parameters":
  …}`` (Llama 3).

Text that may still become a call (a tag's first characters, an answer opening with ``{``)
is withheld until it is decided; what turns out not to be a call, or markup that does not
parse, goes out as text unchanged. Arguments are always a JSON object (a string of JSON is
decoded); key order is kept.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from typing import Any, Literal

from shared.messages import ToolCall, ToolCallFunction

QWEN_OPEN, QWEN_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_OPEN, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
_OPENERS = (QWEN_OPEN, MISTRAL_OPEN)
#: First keys with which a bare JSON answer may be a call (else it is released at once).
_CALL_KEYS = {"name", "arguments", "parameters", "function", "type"}
_FIRST_KEY = re.compile(r'(?:\[\s*)?\{\s*"((?:[^"\\]|\\.)*)"')
_OPENING = re.compile(r'(?:\[\s*)?(?:\{\s*(?:"(?:[^"\\]|\\.)*)?)?')
_ID_CHARS = string.ascii_lowercase + string.digits

_State = Literal["start", "bare", "text", "qwen", "mistral"]


def call_id() -> str:
    """``call_`` and 8 random ``[a-z0-9]``, as Ollama numbers its tool calls."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))


class ToolCallParser:
    def __init__(self) -> None:
        self._state: _State = "start"
        self._buf = ""
        self._count = 0

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Add model text; returns the text decided to be content, and the calls found."""
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """Decide what is still withheld: a call if it parses, else text."""
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> tuple[str, list[ToolCall]]:
        out: list[str] = []
        calls: list[ToolCall] = []
        while self._buf:
            step = getattr(self, f"_{self._state}")(out, calls, final)
            if not step:
                break
        if final and self._buf:  # undecided at the end: it was text after all
            out.append(self._buf)
            self._buf = ""
        return "".join(out), calls

    # Each step consumes from ``_buf``; True means "look again", False "wait for more".

    def _start(self, out: list[str], calls: list[ToolCall], final: bool) -> bool:
        stripped = self._buf.lstrip()
        if not stripped:
            return False
        first = _FIRST_KEY.match(stripped)
        if first is not None:
            self._state = "bare" if first.group(1) in _CALL_KEYS else "text"
            return True
        if _OPENING.fullmatch(stripped) and not final:
            return False  # "[", "{" or '{"na' can still become a call
        self._state = "text"
        return True

    def _bare(self, out: list[str], calls: list[ToolCall], final: bool) -> bool:
        lead = len(self._buf) - len(self._buf.lstrip())
        end = json_end(self._buf, lead)
        if end is None:
            return False  # at the end, _drain releases the unfinished JSON as text
        found = self._calls(self._buf[lead:end], strict=True)
        if found is None:
            out.append(self._buf[:end])
            self._buf, self._state = self._buf[end:], "text"
        else:
            calls += found
            self._buf, self._state = _after_call(self._buf[end:]), "start"
        return True

    def _text(self, out: list[str], calls: list[ToolCall], final: bool) -> bool:
        found = [(self._buf.find(tag), tag) for tag in _OPENERS if tag in self._buf]
        if found:
            index, tag = min(found)
            out.append(self._buf[:index])
            self._buf = self._buf[index + len(tag) :]
            self._state = "qwen" if tag == QWEN_OPEN else "mistral"
            return True
        hold = 0 if final else _partial_tag(self._buf)
        out.append(self._buf[: len(self._buf) - hold])
        self._buf = self._buf[len(self._buf) - hold :]
        return False

    def _qwen(self, out: list[str], calls: list[ToolCall], final: bool) -> bool:
        index = self._buf.find(QWEN_CLOSE)
        if index < 0 and not final:
            return False
        body = self._buf if index < 0 else self._buf[:index]
        rest = "" if index < 0 else self._buf[index + len(QWEN_CLOSE) :]
        found = self._calls(body.strip(), strict=False)
        if found is None:
            out.append(QWEN_OPEN + body + ("" if index < 0 else QWEN_CLOSE))
            self._buf, self._state = rest, "text"
        else:
            calls += found
            self._buf, self._state = _after_call(rest), "start"
        return True

    def _mistral(self, out: list[str], calls: list[ToolCall], final: bool) -> bool:
        body = self._buf.lstrip()
        found: list[ToolCall] | None = None
        end: int | None = None
        if body[:1] in ("[", "{"):  # [TOOL_CALLS][{"name": …, "arguments": …}, …]
            end = json_end(body, 0)
            if end is not None:
                found = self._calls(body[:end], strict=False)
        elif (index := body.find(MISTRAL_ARGS)) >= 0:  # [TOOL_CALLS]name[ARGS]{…}
            start = index + len(MISTRAL_ARGS)
            start += len(body[start:]) - len(body[start:].lstrip())
            end = json_end(body, start)
            if end is not None and end > start:
                found = self._number(_parsed(body[start:end], name=body[:index].strip()))
        if end is None and not final:
            return False
        rest = "" if end is None else body[end:]
        if found is None:
            out.append(MISTRAL_OPEN + self._buf[: len(self._buf) - len(rest)])
            self._buf, self._state = rest, "text"
        else:
            calls += found
            self._buf, self._state = _after_call(rest), "start"
        return True

    def _calls(self, document: str, *, strict: bool) -> list[ToolCall] | None:
        """The calls in a JSON document, or None if it is not (only) calls."""
        try:
            value = json.loads(document)
        except ValueError:
            return None
        items = value if isinstance(value, list) else [value]
        parsed = [_call(item, strict=strict) for item in items]
        return self._number(parsed)

    def _number(self, parsed: list[tuple[str, dict[str, Any]] | None]) -> list[ToolCall] | None:
        if not parsed or any(p is None for p in parsed):
            return None
        found = []
        for name, arguments in (p for p in parsed if p is not None):
            function = ToolCallFunction(name=name, arguments=arguments, index=self._count)
            found.append(ToolCall(id=call_id(), function=function))
            self._count += 1
        return found


def _parsed(arguments: str, *, name: str) -> list[tuple[str, dict[str, Any]] | None]:
    return [_call({"name": name, "arguments": arguments}, strict=True)]


def _call(item: object, *, strict: bool) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):  # {"type": "function", "function": {…}}
        item = item["function"]
        assert isinstance(item, dict)
    name = item.get("name")
    key = "arguments" if "arguments" in item else "parameters"
    if not isinstance(name, str) or not name or (strict and key not in item):
        return None
    arguments = item.get(key)
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return name, arguments


def _after_call(rest: str) -> str:
    # whitespace (and Llama's ";") between calls is not content
    return rest.lstrip().removeprefix(";").lstrip()


def _partial_tag(text: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of an opening tag."""
    for size in range(min(len(text), max(map(len, _OPENERS)) - 1), 0, -1):
        tail = text[-size:]
        if any(tag.startswith(tail) for tag in _OPENERS):
            return size
    return 0


def json_end(text: str, start: int) -> int | None:
    """Index just past the JSON object/array opening at ``start``; None if unfinished."""
    if start >= len(text):
        return None
    if text[start] not in ("{", "["):
        return start  # not JSON at all: an empty "document", which never parses
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return None
