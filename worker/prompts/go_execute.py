"""Ollama's Go-template prompt templates, executed with Ollama's ``Template.Execute`` rules.

The template is translated into Jinja by ``worker.prompts.go_translate``; this gives it
Ollama's values (``.System``, ``.Messages`` with Go field names, ``.Tools`` printed as
JSON, the ``.Think`` flags), and renders a template without ``.Messages`` one turn at a
time, the last turn cut right after ``{{ .Response }}`` where the model continues.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared import thinking
from shared.errors import EngineFailure
from shared.messages import ChatMessage
from shared.thinking import Think
from worker.prompts import go_translate
from worker.prompts.template import Rendered, template_capabilities


class _GoValue(dict[str, Any]):
    """A JSON object seen through Go field names (``.Function.Name``), printed as JSON."""

    def __init__(self, original: dict[str, Any]) -> None:
        super().__init__({_go_name(k): _go(v) for k, v in original.items()})
        self.original = original

    def __str__(self) -> str:
        return json.dumps(self.original, separators=(",", ":"), ensure_ascii=False)


def _go_name(key: str) -> str:
    parts = [p for p in key.lstrip("$").split("_") if p]
    return "".join(p[:1].upper() + p[1:] for p in parts) or key


def _go(value: Any) -> Any:
    if isinstance(value, dict):
        return _GoValue(value)
    if isinstance(value, list):
        return [_go(v) for v in value]
    return value


def _go_print(value: Any) -> Any:
    """Values as Go's fmt prints them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, jinja2.Undefined):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + " ".join(str(_go_print(v)) for v in value) + "]"
    return value


def _go_json(value: Any) -> str:
    if isinstance(value, _GoValue):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_go_json(v) for v in value) + "]"
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _go_printf(fmt: str, *args: Any) -> str:
    return fmt.replace("%v", "%s").replace("%q", '"%s"') % tuple(_go_print(a) for a in args)


@functools.cache
def _go_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        keep_trailing_newline=True, extensions=[loopcontrols], finalize=_go_print
    )
    env.filters["_json"] = _go_json
    env.filters["_str"] = lambda v: str(_go_print(v))
    env.filters["_printf"] = _go_printf
    return env


@functools.lru_cache(maxsize=64)
def _compile(source: str, cut: bool) -> tuple[jinja2.Template, frozenset[str]]:
    try:
        translation = go_translate.translate(source, cut_after_response=cut)
        return _go_environment().from_string(translation.jinja), frozenset(translation.fields)
    except (go_translate.GoTemplateError, jinja2.TemplateSyntaxError) as exc:
        raise EngineFailure(str(exc)) from exc


def _go_message(message: ChatMessage) -> dict[str, Any]:
    calls = [
        {"function": {"index": c.function.index, "name": c.function.name, "arguments": {}}}
        for c in message.tool_calls or []
    ]
    value = _GoValue(
        {
            "role": message.role,
            "content": message.content,
            "thinking": message.thinking or "",
            "tool_calls": calls,
            "tool_name": message.tool_name or "",
            "tool_call_id": message.tool_call_id or "",
        }
    )
    # arguments print as JSON objects, in their own key order
    for call, original in zip(value["ToolCalls"], message.tool_calls or [], strict=True):
        call["Function"]["Arguments"] = _GoValue(original.function.arguments)
    return value


def collate(messages: list[ChatMessage]) -> tuple[str, list[ChatMessage]]:
    """Ollama's ``collate``: the system texts, and messages with consecutive same-role
    messages (but tool results) merged."""
    system = [m.content for m in messages if m.role == "system"]
    merged: list[ChatMessage] = []
    for message in messages:
        if merged and merged[-1].role == message.role and message.role != "tool":
            previous = merged[-1]
            merged[-1] = previous.model_copy(
                update={"content": f"{previous.content}\n\n{message.content}"}
            )
        else:
            merged.append(message)
    return "\n\n".join(system), merged


class GoTemplate:
    """An Ollama (Go ``text/template``) prompt template, executed as Ollama's server does."""

    def __init__(self, source: str, *, stops: list[str] | None = None) -> None:
        self.source = source
        self._full, fields = _compile(source, False)
        self._uses_messages = "messages" in fields
        self.capabilities = template_capabilities(source)
        self.stops = stops or []

    def _run(self, template: jinja2.Template, values: dict[str, Any]) -> str:
        try:
            return template.render(_root=values)
        except (jinja2.TemplateError, TypeError, KeyError, IndexError) as exc:
            raise EngineFailure(f"template: {exc}") from exc

    def render_suffix(self, prompt: str, suffix: str) -> Rendered:
        values = {"Prompt": prompt, "Suffix": suffix, "Response": "", "System": ""}
        return Rendered(self._run(self._full, values), self.stops)

    def render(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[dict[str, Any]] | None = None,
        think: Think = None,
    ) -> Rendered:
        system, merged = collate(messages)
        flags = {
            "Think": thinking.requested(think),
            "ThinkLevel": think if isinstance(think, str) else "",
            "IsThinkSet": think is not None,
        }
        if self._uses_messages:
            values = {
                "System": system,
                "Messages": [_go_message(m) for m in merged],
                "Tools": _go(tools or []),
                "Response": "",
                **flags,
            }
            return Rendered(self._run(self._full, values), self.stops)
        # older templates render one System/Prompt/Response turn at a time; the last turn
        # stops right after {{ .Response }}, where the model continues
        out: list[str] = []
        turn = {"System": "", "Prompt": "", "Response": ""}
        for message in merged:
            # a system text after a turn, or a user text after a response, starts a new turn
            ends_turn = (message.role == "system" and (turn["Prompt"] or turn["Response"])) or (
                message.role == "user" and turn["Response"]
            )
            if ends_turn:
                out.append(self._run(self._full, {**turn, **flags}))
                turn = {"System": "", "Prompt": "", "Response": ""}
            key = {"system": "System", "user": "Prompt", "assistant": "Response"}.get(message.role)
            if key:
                turn[key] = message.content
        cut, _ = _compile(self.source, True)
        out.append(self._run(cut, {**turn, **flags}))
        return Rendered("".join(out), self.stops)
