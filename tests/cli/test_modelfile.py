"""The Modelfile parser: Ollama's syntax into /api/create's fields, and errors that name
their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.modelfile import Modelfile, ModelfileError, parse, read

FULL = '''# a comment, then a blank line

from ./tiny.gguf
Template """{{ if .System }}<|system|>{{ .System }}
{{ end }}{{ .Prompt }}"""
SYSTEM You are terse.
PARAMETER temperature 0.7
parameter num_ctx 4096
PARAMETER stop "<|end|>"
PARAMETER stop <|user|>
PARAMETER use_mmap false
PARAMETER mirostat 2
MESSAGE user Hello there
MESSAGE Assistant """Hi!
How can I help?"""
LICENSE MIT
LICENSE """Apache
2.0"""
RENDERER qwen3
'''


def test_a_full_modelfile() -> None:
    parsed = parse(FULL)
    assert parsed == Modelfile(
        from_="./tiny.gguf",
        template="{{ if .System }}<|system|>{{ .System }}\n{{ end }}{{ .Prompt }}",
        system="You are terse.",
        licenses=["MIT", "Apache\n2.0"],
        parameters={
            "temperature": 0.7,
            "num_ctx": 4096,
            "stop": ["<|end|>", "<|user|>"],
            "use_mmap": False,
            "mirostat": 2,
        },
        messages=[
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Hi!\nHow can I help?"},
        ],
        extra={"renderer": "qwen3"},
    )
    assert parsed.request() == {
        "renderer": "qwen3",
        "template": parsed.template,
        "system": "You are terse.",
        "license": ["MIT", "Apache\n2.0"],
        "parameters": parsed.parameters,
        "messages": parsed.messages,
    }


def test_a_later_template_or_system_replaces_an_earlier_one() -> None:
    parsed = parse('FROM m\nSYSTEM one\nSYSTEM "two"\nTEMPLATE """a"""\nTEMPLATE b\n')
    assert (parsed.from_, parsed.system, parsed.template) == ("m", "two", "b")
    assert parse("FROM m").request() == {}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("SYSTEM hi\n", "Modelfile: no FROM line"),
        ("FROM m\nADAPTER ./lora.gguf\n", "Modelfile:2: ADAPTER is not supported"),
        ("FROM m\nQUANTIZE q4\n", 'Modelfile:2: command must be one of "from", '),
        ("FROM m\nPARAMETER nope 1\n", "Modelfile:2: unknown parameter 'nope'"),
        ("FROM m\n\nPARAMETER num_ctx big\n", "Modelfile:3: invalid integer value for num_ctx"),
        ("FROM m\nPARAMETER temperature hot\n", "Modelfile:2: invalid float32 value for"),
        ("FROM m\nPARAMETER use_mmap maybe\n", "Modelfile:2: invalid boolean value for"),
        ("FROM m\nPARAMETER\n", "Modelfile:2: PARAMETER needs a name and a value"),
        ("FROM m\nPARAMETER top_k\n", "Modelfile:2: PARAMETER top_k needs a value"),
        ("FROM m\nMESSAGE tool hi\n", 'Modelfile:2: message role must be one of "system"'),
        ("FROM m\nSYSTEM\n", "Modelfile:2: SYSTEM needs a value"),
        ('FROM m\nSYSTEM """never\nclosed\n', 'Modelfile:2: SYSTEM: """ is never closed'),
        ('FROM m\nSYSTEM """a\nb""" extra\n', 'Modelfile:3: text after closing """'),
    ],
)
def test_errors_name_their_line(text: str, error: str) -> None:
    with pytest.raises(ModelfileError) as raised:
        parse(text)
    assert str(raised.value).startswith(error), str(raised.value)


def test_read_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "Modelfile"
    path.write_text("FROM m\nBOGUS x\n")
    with pytest.raises(ModelfileError, match=f"^{path}:2: command must be one of"):
        read(path)
    with pytest.raises(ModelfileError, match="No such file"):
        read(tmp_path / "missing")
