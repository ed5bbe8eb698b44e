"""Model names parsed as Ollama parses them (``shared.names``), as the API resolves them."""

from __future__ import annotations

import pytest

from shared.errors import InvalidRequest
from shared.names import Name, normalize, parse


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gemma3", "gemma3:latest"),
        ("Gemma3:270M", "gemma3:270m"),
        ("library/gemma3", "gemma3:latest"),
        ("registry.ollama.ai/library/gemma3:1b", "gemma3:1b"),
        ("REGISTRY.ollama.ai/Library/gemma3", "gemma3:latest"),
        ("ns/model:tag", "ns/model:tag"),
        (
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
            "hf.co/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m",
        ),
        ("localhost:5000/ns/m", "localhost:5000/ns/m:latest"),
        ("https://example.com/ns/m:v1", "example.com/ns/m:v1"),
        ("_private", "_private:latest"),
        ("qwen2.5:0.5b", "qwen2.5:0.5b"),
    ],
)
def test_normal_form_is_the_shortest_display_name(name: str, expected: str) -> None:
    assert normalize(name) == expected


def test_parts() -> None:
    assert parse("hf.co/u/r:q") == Name("hf.co", "u", "r", "q")
    assert parse("m") == Name("registry.ollama.ai", "library", "m", "latest")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a/b/c/d",
        "../etc/passwd",
        "a:b:c",
        "bad name",
        "m:",
        ":tag",
        "/m",
        "ns/",
        "ns.dotted/m",
        "-m",
        "x" * 81,
        "m:" + "t" * 81,
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^invalid model name$"):
        normalize(name)


def test_full_names_for_capability_errors() -> None:
    assert parse("gemma3").full() == "registry.ollama.ai/library/gemma3:latest"
    assert parse("hf.co/u/r:q4").full() == "hf.co/u/r:q4"
