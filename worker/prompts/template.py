"""What every prompt template is: a ``ChatTemplate`` renders messages into a ``Rendered``
prompt with its stop strings. Which template a model has is ``worker.modelinfo``'s choice;
the kinds are in ``worker.prompts.jinja`` (a GGUF's own), ``worker.prompts.builtin`` (for
GGUFs without one) and ``worker.prompts.go_execute`` (Ollama's Go templates).
"""

from __future__ import annotations

import re
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


def job_messages(job: GenerateJob) -> list[ChatMessage]:
    """/api/generate renders its prompt as one user turn (with ``system``), like Ollama."""
    if job.kind == "chat":
        return job.messages
    messages = [ChatMessage(role="system", content=job.system)] if job.system else []
    return [*messages, ChatMessage(role="user", content=job.prompt)]
