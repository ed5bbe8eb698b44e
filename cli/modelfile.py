"""Ollama's Modelfile, read into the fields of an ``/api/create`` request (as ``ollama
create`` sends them; ``docs/modelfile.mdx``).

::

    # a comment
    FROM ./model.gguf            (or a model name: FROM gemma3:270m)
    TEMPLATE \"\"\"{{ .Prompt }}\"\"\"   (\"\"\"…\"\"\" may span lines; "…" is one line)
    SYSTEM You are terse.
    PARAMETER temperature 0.7    (repeatable; ``stop`` may repeat, each adds one)
    MESSAGE user Hello           (role: system, user or assistant)
    LICENSE \"\"\"MIT …\"\"\"          (repeatable)

Commands are case-insensitive. ``ADAPTER`` is refused (Herd has no LoRA support);
``REQUIRES``, ``RENDERER`` and ``PARSER`` are passed on as Ollama's CLI does. Every error
names its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api import fields
from api.routes.create import LEGACY_PARAMETERS

COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "renderer",
    "parser",
    "requires",
    "parameter",
    "message",
)
ROLES = ("system", "user", "assistant")
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_COMMAND = re.compile(r"(\S+)\s*(.*)", re.DOTALL)


class ModelfileError(ValueError):
    """A Modelfile Herd cannot use; the text starts with ``<file>:<line>:``."""


@dataclass
class Modelfile:
    from_: str = ""
    template: str | None = None
    system: str | None = None
    licenses: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    #: ``requires``, ``renderer``, ``parser``: sent as they are.
    extra: dict[str, str] = field(default_factory=dict)

    def request(self) -> dict[str, Any]:
        """The body of ``/api/create`` less ``model`` and ``from``/``files``."""
        body: dict[str, Any] = dict(self.extra)
        if self.template is not None:
            body["template"] = self.template
        if self.system is not None:
            body["system"] = self.system
        if self.licenses:
            body["license"] = self.licenses
        if self.parameters:
            body["parameters"] = self.parameters
        if self.messages:
            body["messages"] = self.messages
        return body


class _Lines:
    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source
        self.index = 0  # of the next line to read

    def error(self, line: int, message: str) -> ModelfileError:
        return ModelfileError(f"{self.source}:{line}: {message}")

    def value(self, rest: str, line: int, what: str) -> str:
        """The value starting at ``rest`` (the end of line ``line``): \"\"\"…\"\"\" (reading on
        until it closes), "…", or the rest of the line."""
        if rest.startswith('"""'):
            text = rest[3:]
            while '"""' not in text:
                if self.index >= len(self.lines):
                    raise self.error(line, f'{what}: """ is never closed')
                text += "\n" + self.lines[self.index]
                self.index += 1
            value, _, after = text.partition('"""')
            if after.strip():
                raise self.error(self.index if "\n" in text else line, 'text after closing """')
            return value
        if len(rest) >= 2 and rest.startswith('"') and rest.endswith('"'):
            return rest[1:-1].replace('\\"', '"')
        if not rest:
            raise self.error(line, f"{what} needs a value")
        return rest


def _parameter(name: str, raw: str) -> Any:
    """A PARAMETER's value, typed as Ollama's ``FormatParams`` types it."""
    kind = {**fields.SAMPLING_OPTIONS, **fields.LOAD_OPTIONS}.get(name)
    if kind is None and name not in LEGACY_PARAMETERS:
        raise ValueError(f"unknown parameter '{name}'")
    if kind == "array":
        return raw
    if kind == "boolean" or (kind is None and raw in _TRUE + _FALSE):
        if raw not in _TRUE + _FALSE:
            raise ValueError(f"invalid boolean value for {name}: {raw}")
        return raw in _TRUE
    try:
        if kind == "integer":
            return int(raw)
        if kind == "float32":
            return float(raw)
        return float(raw) if "." in raw or "e" in raw.lower() else int(raw)  # legacy
    except ValueError:
        if kind is None:
            return raw
        raise ValueError(f"invalid {kind} value for {name}: {raw}") from None


def parse(text: str, *, source: str = "Modelfile") -> Modelfile:
    """Read a Modelfile; raises ``ModelfileError`` naming the line of the first problem."""
    lines = _Lines(text, source)
    out = Modelfile()
    while lines.index < len(lines.lines):
        number = lines.index + 1
        stripped = lines.lines[lines.index].strip()
        lines.index += 1
        if not stripped or stripped.startswith("#"):
            continue
        found = _COMMAND.fullmatch(stripped)
        assert found is not None  # a non-empty stripped line has a first word
        command, rest = found.group(1).lower(), found.group(2)
        if command not in COMMANDS:
            names = ", ".join(f'"{name}"' for name in COMMANDS[:-1])
            raise lines.error(number, f'command must be one of {names}, or "message"')
        if command == "adapter":
            raise lines.error(
                number, "ADAPTER is not supported: Herd creates models without adapters"
            )
        if command in ("parameter", "message"):
            key, rest = [*rest.split(None, 1), "", ""][:2]
            if not key:
                raise lines.error(number, f"{command.upper()} needs a name and a value")
            value = lines.value(rest, number, f"{command.upper()} {key}")
            if command == "message":
                if key.lower() not in ROLES:
                    raise lines.error(
                        number, 'message role must be one of "system", "user", or "assistant"'
                    )
                out.messages.append({"role": key.lower(), "content": value})
                continue
            try:
                typed = _parameter(key, value)
            except ValueError as exc:
                raise lines.error(number, str(exc)) from None
            if key == "stop":
                out.parameters.setdefault("stop", []).append(typed)
            else:
                out.parameters[key] = typed
            continue
        value = lines.value(rest, number, command.upper())
        if command == "from":
            out.from_ = value
        elif command == "license":
            out.licenses.append(value)
        elif command in ("template", "system"):
            setattr(out, command, value)
        else:
            out.extra[command] = value
    if not out.from_:
        raise ModelfileError(f"{source}: no FROM line")
    return out


def read(path: Path) -> Modelfile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelfileError(f"{path}: {exc.strerror or exc}") from exc
    return parse(text, source=str(path))
