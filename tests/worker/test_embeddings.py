"""Raw embeddings cut to ``dimensions`` and normalised."""

from __future__ import annotations

import math

import pytest

from worker.embeddings import shape_embeddings


def test_embeddings_are_cut_then_normalised() -> None:
    raw = [[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]]
    shaped = shape_embeddings(raw, dimensions=2, normalize=True)
    assert shaped[0] == pytest.approx([0.6, 0.8])
    assert shaped[1] == [0.0, 0.0]  # a zero vector stays zero, no division by zero
    full = shape_embeddings(raw, dimensions=None, normalize=True)
    assert math.hypot(*full[0]) == pytest.approx(1.0) and len(full[0]) == 3
    assert shape_embeddings(raw, dimensions=10, normalize=False) == raw
