"""The contract tier walks ollama-api.md against the same running cluster as the clients."""

from __future__ import annotations

from tests.clients.cluster import gemma_url, herd_url

__all__ = ["gemma_url", "herd_url"]
