"""Ollama's Go templates, translated to Jinja and executed with Ollama's rules."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import EngineFailure
from shared.messages import ChatMessage, ToolCall, ToolCallFunction
from worker.prompts import go_translate
from worker.prompts.builtin import GEMMA_GO_TEMPLATE, GemmaTemplate
from worker.prompts.go_execute import GoTemplate


def _msgs(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=role, content=content) for role, content in pairs]


def _render(source: str, messages: list[ChatMessage], **kwargs: Any) -> str:
    return GoTemplate(source).render(messages, **kwargs).prompt


def test_fields_conditions_and_trimming() -> None:
    source = (
        "{{- if .System }}SYS: {{ .System }}\n{{ end -}}\n"
        "   USER: {{ .Prompt }}\n{{- if .Response }} BOT: {{ .Response }}{{ else }} BOT:{{ end }}"
    )
    history = _msgs(("system", "Be terse"), ("user", "Hi"), ("assistant", "Yo"), ("user", "Bye"))
    # the last turn ends at {{ .Response }}: the else branch after it is cut, as in Ollama
    assert _render(source, history) == "SYS: Be terse\nUSER: Hi BOT: YoUSER: Bye"
    assert _render(source, _msgs(("user", "Hi"))) == "USER: Hi"


def test_legacy_template_renders_turns_and_cuts_after_the_last_response() -> None:
    source = (
        "{{ if .System }}<|system|>{{ .System }}</s>{{ end }}"
        "{{ if .Prompt }}<|user|>{{ .Prompt }}</s>{{ end }}<|assistant|>{{ .Response }}</s>"
    )
    history = _msgs(("system", "S"), ("user", "A"), ("assistant", "B"), ("user", "C"))
    assert _render(source, history) == (
        "<|system|>S</s><|user|>A</s><|assistant|>B</s><|user|>C</s><|assistant|>"
    )


def test_messages_template_matches_the_builtin_gemma_format() -> None:
    history = _msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"))
    # Ollama's gemma3 template (range with $i, slice, len, eq, or, not, variables)
    assert _render(GEMMA_GO_TEMPLATE, history) == GemmaTemplate().render(history).prompt


def test_variables_assigned_inside_a_range_reach_the_outer_scope() -> None:
    source = (
        "{{- $lastUser := -1 }}"
        '{{- range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $lastUser = $i }}{{ end }}'
        "{{- end }}last={{ $lastUser }}"
        "{{- range .Messages }}|{{ .Role }}{{ end }}"
    )
    history = _msgs(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
    assert _render(source, history) == "last=2|user|assistant|user|assistant"


def test_tools_and_tool_calls_print_as_json() -> None:
    source = (
        "{{- if .Tools }}TOOLS {{ json .Tools }}\n{{ end }}"
        "{{- range .Messages }}{{ .Role }}:{{ .Content }}"
        "{{- range .ToolCalls }} call {{ .Function.Name }}{{ .Function.Arguments }}{{ end }}"
        "{{- if .ToolName }} from {{ .ToolName }}{{ end }}\n{{ end }}"
    )
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    call = ToolCall(function=ToolCallFunction(name="weather", arguments={"city": "Oslo"}))
    history = [
        ChatMessage(role="user", content="Weather?"),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", content="rain", tool_name="weather"),
    ]
    assert _render(source, history, tools=[tool]) == (
        'TOOLS [{"type":"function","function":{"name":"weather","parameters":{"type":"object"}}}]\n'
        "user:Weather?\n"
        'assistant: call weather{"city":"Oslo"}\n'
        "tool:rain from weather\n"
    )


def test_suffix_renders_prompt_and_suffix() -> None:
    source = (
        "{{ if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"
        "{{ else }}{{ .Prompt }}{{ end }}"
    )
    rendered = GoTemplate(source).render_suffix("def f(", "    return x")
    assert rendered.prompt == "<PRE> def f( <SUF>    return x <MID>"


def test_think_flags_and_with_blocks() -> None:
    source = (
        "{{ with .System }}[{{ . }}]{{ else }}[none]{{ end }}"
        "{{ if .IsThinkSet }}{{ if .Think }}think{{ else }}nothink{{ end }}{{ end }}"
    )
    assert _render(source, _msgs(("user", "x")), think=False) == "[none]nothink"
    assert _render(source, _msgs(("system", "S"), ("user", "x")), think=True) == "[S]think"
    assert _render(source, _msgs(("user", "x"))) == "[none]"


def test_literal_text_that_looks_like_jinja_stays_verbatim() -> None:
    source = "{% raw %} {# x #} {{ .Prompt }} %}"
    assert _render(source, _msgs(("user", "p"))) == "{% raw %} {# x #} p %}"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ if .Prompt }}open", "unexpected EOF"),
        ("{{ end }}", "unexpected {{end}}"),
        ('{{ template "x" }}', "not supported"),
        ("{{ html .Prompt }}", 'function "html" not defined'),
        ("{{ .Prompt ", "unclosed action"),
    ],
)
def test_unsupported_or_malformed_templates_fail_clearly(source: str, message: str) -> None:
    with pytest.raises(go_translate.GoTemplateError, match=message):
        go_translate.translate(source)
    with pytest.raises(EngineFailure, match=message):
        GoTemplate(source)


def test_translation_is_readable_jinja() -> None:
    jinja = go_translate.translate("{{ if .System }}{{ .System }}{{ end }}").jinja
    assert '{% if _root["System"] %}{{ _root["System"] }}{% endif %}' in jinja
