"""The client tier: official clients (ollama-python, openai, LangChain, ollama-js) against
a running Herd cluster of real processes (see ``tests.clients.cluster``)."""

from __future__ import annotations

from tests.clients.cluster import gemma_url, herd_url

__all__ = ["gemma_url", "herd_url"]
