"""A GGUF's own chat template (``tokenizer.chat_template``), rendered as Hugging Face's
``apply_chat_template`` does: sandboxed, with ``tools``, ``enable_thinking`` (the one rule,
``shared.thinking``) and messages with ``tool_calls``/``reasoning_content``."""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared import thinking
from shared.errors import EngineFailure, InvalidRequest
from shared.messages import ChatMessage
from shared.thinking import Think
from worker.prompts.template import Rendered, template_capabilities


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
