"""What every prompt template is: a ``ChatTemplate`` renders messages into a ``Rendered``
prompt with its stop strings. Which template a model has is ``worker.modelinfo``'s choice;
the kinds are in ``worker.prompts.jinja`` (a GGUF's own), ``worker.prompts.builtin`` (for
GGUFs without one) and ``worker.prompts.go_execute`` (Ollama's Go templates).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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


def job_messages(
    job: GenerateJob, *, system: str = "", preamble: Sequence[ChatMessage] = ()
) -> list[ChatMessage]:
    """The messages a job's prompt renders, with the model's Modelfile ``SYSTEM`` and
    ``MESSAGE``s (``preamble``) as Ollama's handlers add them:

    - a chat: the preamble, then the request's messages; the model's system prompt first
      unless the request's first message is a system message;
    - /api/generate: one user turn, after the request's ``system`` (else the model's) and
      the preamble (left out when the request carries a ``context``)."""
    if job.kind == "chat":
        messages = [*preamble, *job.messages]
        if system and not (job.messages and job.messages[0].role == "system"):
            messages.insert(0, ChatMessage(role="system", content=system))
        return messages
    chosen = job.system or system
    messages = [ChatMessage(role="system", content=chosen)] if chosen else []
    if job.context is None:
        messages += preamble
    return [*messages, ChatMessage(role="user", content=job.prompt)]
