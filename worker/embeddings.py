"""An engine's raw embeddings shaped as the client asked: cut to ``dimensions``, and
L2-normalised (Ollama's ``/api/embed`` normalises; ``/api/embeddings`` does not)."""

from __future__ import annotations

import math


def shape_embeddings(
    vectors: list[list[float]], *, dimensions: int | None, normalize: bool
) -> list[list[float]]:
    """Cut each vector to ``dimensions`` (when smaller) and scale it to unit length."""
    shaped = []
    for vector in vectors:
        if dimensions is not None and 0 < dimensions < len(vector):
            vector = vector[:dimensions]
        if normalize:
            norm = math.sqrt(math.fsum(x * x for x in vector))
            vector = [x / norm for x in vector] if norm > 0 else list(vector)
        shaped.append(vector)
    return shaped
