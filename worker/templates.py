"""Rendering chat messages (and /api/generate's prompt) into one model prompt.

Three kinds of template (the third in ``worker.goprompt``):

- ``JinjaTemplate``: a GGUF's ``tokenizer.chat_template``, rendered as Hugging Face's
  ``apply_chat_template`` does (sandboxed; ``tools``, ``enable_thinking``, messages with
  ``tool_calls``/``reasoning_content``).
- ``GemmaTemplate``: a built-in format for GGUFs without a template (the Gemma 3 package).
- ``GoTemplate``: Ollama's Go-template syntax (a request's ``template`` override), through
  ``worker.gotemplate``, with Ollama's ``Template.Execute`` rules.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared import thinking
from shared.errors import EngineFailure, InvalidRequest
from shared.messages import ChatMessage, GenerateJob
from shared.thinking import Think

_THINK_MARKERS = re.compile(r"<think>|enable_thinking|reasoning_content")


def template_capabilities(source: str) -> list[str]:
    """``tools`` and ``thinking`` as a chat template (Jinja or Go) reveals them."""
    capabilities = []
    if re.search(r"\btools\b|\.Tools\b", source):
        capabilities.append("tools")
    if _THINK_MARKERS.search(source) or re.search(r"\.Think\b", source):
        capabilities.append("thinking")
    return capabilities


@dataclass(frozen=True)
class Rendered:
    prompt: str
    #: Strings that end the turn (besides the model's end-of-generation tokens).
    stops: list[str]


class ChatTemplate(Protocol):
    #: What /api/show shows as the model's template.
    source: str
    #: ``tools``/``thinking`` when the template handles them.
    capabilities: list[str]
    #: Strings that end the model's turn.
    stops: list[str]

    def render(
        self, messages: list[ChatMessage], *, tools: list[dict[str, Any]] | None, think: Think
    ) -> Rendered: ...


#: Ollama's template for gemma3, shown by /api/show for the built-in format.
GEMMA_GO_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""


class GemmaTemplate:
    """Gemma's turns; it has no system role, so a system text leads the first user turn."""

    source = GEMMA_GO_TEMPLATE
    capabilities: list[str] = []
    stops = ["<end_of_turn>"]

    def render(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[dict[str, Any]] | None = None,
        think: Think = None,
    ) -> Rendered:
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        parts: list[str] = []
        for message in (m for m in messages if m.role != "system"):
            role = "model" if message.role == "assistant" else "user"
            content = message.content
            if system and role == "user":
                content, system = f"{system}\n\n{content}", ""
            parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
        if system:  # only a system message was given
            parts.append(f"<start_of_turn>user\n{system}<end_of_turn>\n")
        parts.append("<start_of_turn>model\n")
        return Rendered(prompt="".join(parts), stops=self.stops)


def _raise(message: str) -> None:
    raise InvalidRequest(f"chat template: {message}")


def _tojson(value: Any, indent: int | None = None, **kwargs: Any) -> str:
    # Jinja's own tojson HTML-escapes <, > and &, which no prompt wants (HF overrides it too)
    return json.dumps(
        value,
        ensure_ascii=False,
        indent=indent,
        separators=kwargs.get("separators"),
        sort_keys=kwargs.get("sort_keys", False),
    )


@functools.cache
def _hf_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _hf_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.thinking:
        out["reasoning_content"] = out["thinking"] = message.thinking
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "type": "function",
                **({"id": call.id} if call.id else {}),
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_name:
        out["name"] = out["tool_name"] = message.tool_name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


class JinjaTemplate:
    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        try:
            self._template = _hf_environment().from_string(source)
        except jinja2.TemplateError as exc:
            raise EngineFailure(f"the model's chat template does not parse: {exc}") from exc
        self.source = source
        self.capabilities = template_capabilities(source)
        self._bos, self._eos = bos_token, eos_token
        self.stops = [eos_token] if eos_token else []

    def render(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[dict[str, Any]] | None = None,
        think: Think = None,
    ) -> Rendered:
        extra: dict[str, Any] = {}
        if "thinking" in self.capabilities:
            extra["enable_thinking"] = thinking.enabled(think, capable=True)
            if isinstance(think, str):
                extra["reasoning_effort"] = "high" if think == "max" else think
        try:
            prompt = self._template.render(
                messages=[_hf_message(m) for m in messages],
                tools=tools or None,
                bos_token=self._bos,
                eos_token=self._eos,
                add_generation_prompt=True,
                **extra,
            )
        except jinja2.TemplateError as exc:
            raise EngineFailure(f"the model's chat template failed: {exc}") from exc
        # the tokenizer adds BOS itself
        if self._bos and prompt.startswith(self._bos):
            prompt = prompt[len(self._bos) :]
        return Rendered(prompt=prompt, stops=self.stops)


BUILTIN: dict[str, ChatTemplate] = {"gemma": GemmaTemplate()}


def job_messages(job: GenerateJob) -> list[ChatMessage]:
    """/api/generate renders its prompt as one user turn (with ``system``), like Ollama."""
    if job.kind == "chat":
        return job.messages
    messages = [ChatMessage(role="system", content=job.system)] if job.system else []
    return [*messages, ChatMessage(role="user", content=job.prompt)]
