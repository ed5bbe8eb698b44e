"""The OpenAI-compatible layer (``/v1``): OpenAI requests become native Ollama requests,
run through the same call builders, and their native answers become OpenAI objects."""
