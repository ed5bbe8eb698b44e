"""Rendering chat messages (and /api/generate's prompt) into one model prompt.

A GGUF that carries ``tokenizer.chat_template`` is rendered with it (Jinja, sandboxed, as
Hugging Face does); a catalog entry may name a built-in format instead, for GGUFs without a
template, such as the Gemma 3 package's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.messages import ChatMessage, GenerateJob


@dataclass(frozen=True)
class Rendered:
    prompt: str
    #: Strings that end the turn (besides the model's end-of-generation tokens).
    stops: list[str]


class ChatTemplate(Protocol):
    def render(self, messages: list[ChatMessage]) -> Rendered: ...


class GemmaTemplate:
    """Gemma's turns; it has no system role, so a system text leads the first user turn."""

    def render(self, messages: list[ChatMessage]) -> Rendered:
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
        return Rendered(prompt="".join(parts), stops=["<end_of_turn>"])


class JinjaTemplate:
    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(source)
        self._bos, self._eos = bos_token, eos_token

    def render(self, messages: list[ChatMessage]) -> Rendered:
        prompt = self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            bos_token=self._bos,
            eos_token=self._eos,
            add_generation_prompt=True,
        )
        # the tokenizer adds BOS itself
        if self._bos and prompt.startswith(self._bos):
            prompt = prompt[len(self._bos) :]
        return Rendered(prompt=prompt, stops=[self._eos] if self._eos else [])


BUILTIN: dict[str, ChatTemplate] = {"gemma": GemmaTemplate()}


def job_messages(job: GenerateJob) -> list[ChatMessage]:
    """/api/generate renders its prompt as one user turn (with ``system``), like Ollama."""
    if job.kind == "chat":
        return job.messages
    messages = [ChatMessage(role="system", content=job.system)] if job.system else []
    return [*messages, ChatMessage(role="user", content=job.prompt)]
