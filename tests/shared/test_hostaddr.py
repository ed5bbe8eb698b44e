from __future__ import annotations

import pytest

from shared.hostaddr import parse_host


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
        (":8080", "http://127.0.0.1:8080"),
        ("example.com:1234", "http://example.com:1234"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("https://example.com:99", "https://example.com:99"),
        ("[::1]:5000", "http://[::1]:5000"),
    ],
)
def test_parses_like_ollama_host(value: str, url: str) -> None:
    assert parse_host(value).url == url


def test_rejects_a_bad_port() -> None:
    with pytest.raises(ValueError, match="invalid port"):
        parse_host("host:notaport")
