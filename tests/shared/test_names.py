from __future__ import annotations

import pytest

from shared.errors import InvalidRequest
from shared.names import normalize


@pytest.mark.parametrize(
    ("name", "expected"),
    [("gemma3", "gemma3:latest"), ("Gemma3:270M", "gemma3:270m"), ("ns/model:tag", "ns/model:tag")],
)
def test_normalises(name: str, expected: str) -> None:
    assert normalize(name) == expected


@pytest.mark.parametrize("name", ["../etc/passwd", "", "a:b:c", "bad name", "x" * 300])
def test_rejects_invalid_names(name: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid model name"):
        normalize(name)
