"""The llama.cpp engine: the only package that imports ``llama_cpp``.

``engine`` (the ``Engine`` implementation), ``model`` (a loaded model and its thread),
``prompt`` (templates to tokens, truncation), ``generate`` (the decode loop, prefix reuse,
context shift), ``sampling`` (Ollama's options as a sampler chain, logprobs), ``grammar``
(``format`` to a grammar), ``embed`` (embeddings).
"""
