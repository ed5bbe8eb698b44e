"""Chat templates: the protocol's helpers, the built-in Gemma format and a GGUF's Jinja."""

from __future__ import annotations

import pytest

from shared.errors import InvalidRequest
from shared.messages import ChatMessage, GenerateJob, ToolCall, ToolCallFunction
from worker.prompts.builtin import GemmaTemplate
from worker.prompts.jinja import JinjaTemplate
from worker.prompts.template import job_messages, template_capabilities


def test_gemma_turns_with_system_folded_into_first_user_turn() -> None:
    rendered = GemmaTemplate().render(
        [
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Hi"),
            ChatMessage(role="assistant", content="Hello"),
            ChatMessage(role="user", content="Bye"),
        ]
    )
    assert rendered.prompt == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert rendered.stops == ["<end_of_turn>"]


def test_jinja_template_from_gguf_metadata() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    rendered = JinjaTemplate(source, bos_token="<s>", eos_token="</s>").render(
        [ChatMessage(role="user", content="Hi")]
    )
    assert rendered.prompt == "<|user|>Hi</s><|assistant|>"
    assert rendered.stops == ["</s>"]


def test_generate_prompt_becomes_a_user_turn_with_system() -> None:
    job = GenerateJob(
        request_id="r",
        model="m",
        kind="generate",
        prompt="Why?",
        system="Sys",
        enqueued_at_ms=0,
        deadline_ms=1,
    )
    assert job_messages(job) == [
        ChatMessage(role="system", content="Sys"),
        ChatMessage(role="user", content="Why?"),
    ]


QWEN_LIKE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n{% for tool in tools %}{{ tool | tojson }}\n"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{%- if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{{ m.content }}"
    "{%- for call in m.tool_calls or [] %}<tool_call>{{ call.function | tojson }}</tool_call>"
    "{% endfor %}"
    "{%- if m.role == 'tool' %} ({{ m.name }}){% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{%- endif %}{% endif %}"
)


def test_jinja_template_renders_tools_tool_calls_and_thinking() -> None:
    template = JinjaTemplate(QWEN_LIKE, bos_token="", eos_token="<|im_end|>")
    assert template.capabilities == ["tools", "thinking"]
    call = ToolCall(function=ToolCallFunction(name="get_weather", arguments={"city": "Tokyo"}))
    messages = [
        ChatMessage(role="user", content="Weather <in> Tokyo?"),
        ChatMessage(role="assistant", thinking="Use the tool.", tool_calls=[call]),
        ChatMessage(role="tool", content="sunny", tool_name="get_weather"),
    ]
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Ä & <b>"}}
    prompt = template.render(messages, tools=[tool], think=False).prompt
    assert prompt == (
        "<|im_start|>system\n# Tools\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Ä & <b>"}}\n'
        "<|im_end|>\n"
        "<|im_start|>userWeather <in> Tokyo?<|im_end|>\n"
        "<|im_start|>assistant<think>Use the tool.</think>"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Tokyo"}}</tool_call><|im_end|>\n'
        "<|im_start|>toolsunny (get_weather)<|im_end|>\n"
        "<|im_start|>assistant<think>\n\n</think>"
    )
    # thinking is on by default (Ollama's rule for thinking models), and without tools
    # the template gets none
    thinking = template.render(messages[:1], tools=None, think=None).prompt
    assert thinking.endswith("<|im_start|>assistant")
    assert "# Tools" not in thinking


def test_jinja_raise_exception_is_a_bad_request() -> None:
    template = JinjaTemplate(
        "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}",
        bos_token="",
        eos_token="",
    )
    with pytest.raises(InvalidRequest, match="user first"):
        template.render([ChatMessage(role="assistant", content="x")], tools=None, think=None)


def test_template_capabilities() -> None:
    assert template_capabilities("{{ messages }}") == []
    assert template_capabilities("{% if tools %}{% endif %}") == ["tools"]
    assert template_capabilities("{{ .Tools }}{{ if .Think }}{{ end }}") == ["tools", "thinking"]
    assert template_capabilities("{{ m.reasoning_content }}") == ["thinking"]
    assert GemmaTemplate().capabilities == []
