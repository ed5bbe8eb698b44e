from __future__ import annotations

from shared.messages import ChatMessage, GenerateJob
from worker.templates import GemmaTemplate, JinjaTemplate, job_messages


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
