"""Go's fmt verbs as Ollama's texts use them."""

from __future__ import annotations

import pytest

from api import gofmt


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("llama3", '"llama3"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a\\b", '"a\\\\b"'),
        ("line\nnext\ttab", '"line\\nnext\\ttab"'),
        ("\x00\x7f", '"\\x00\\x7f"'),
        ("Ünïcode 日本", '"Ünïcode 日本"'),
        ("\u200b", '"\\u200b"'),
        ("", '""'),
    ],
)
def test_quote_is_strconv_quote(text: str, quoted: str) -> None:
    assert gofmt.quote(text) == quoted


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.9, "0.9"),
        (1.0, "1"),
        (0.0, "0"),
        (-2.5, "-2.5"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (1e21, "1e+21"),
        (float("inf"), "+Inf"),
    ],
)
def test_floats_print_as_go_prints_them(number: float, text: str) -> None:
    assert gofmt.float_text(number) == text


def test_go_syntax_quotes_strings_only() -> None:
    assert gofmt.go_syntax("<end_of_turn>") == '"<end_of_turn>"'
    assert gofmt.go_syntax(40) == "40"
    assert gofmt.go_syntax(0.95) == "0.95"
    assert gofmt.go_syntax(True) == "true"
    assert gofmt.value("x") == "x" and gofmt.value(None) == "<nil>"
