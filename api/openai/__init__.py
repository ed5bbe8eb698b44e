"""The OpenAI-compatible layer (``/v1``): OpenAI requests become native Ollama requests,
run through the same pipeline as ``/api`` (``api.requests`` checks them, ``api.responses``
renders the native answers), and those answers become OpenAI objects."""
