"""Built-in chat formats, for GGUFs without a template of their own (the Gemma 3 package's
has none), named by a ``ModelSpec``'s ``chat_format``."""

from __future__ import annotations

from typing import Any

from shared.messages import ChatMessage
from shared.thinking import Think
from worker.prompts.template import ChatTemplate, Rendered

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


BUILTIN: dict[str, ChatTemplate] = {"gemma": GemmaTemplate()}

#: The built-in format of a GGUF that has no template, by its ``general.architecture``: a
#: model created from such a file chats in its family's turns (Ollama would fall back to
#: ``{{ .Prompt }}`` and answer a chat as raw text).
BY_ARCHITECTURE = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}
