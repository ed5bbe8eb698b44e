"""The llama.cpp engine: the only package that imports ``llama_cpp``.

``engine`` (the ``Engine`` implementation), ``model`` (llama.cpp's model and context,
sized for the slots), ``batch`` (the scheduler: one thread per model, every running
sequence in one ``llama_decode`` per step), ``sequence`` (one generation: prompt, sampler,
text), ``prompt`` (templates to tokens, truncation), ``sampling`` (Ollama's options as a
sampler chain, logprobs), ``grammar`` (``format`` to a grammar), ``embed`` (embeddings).
"""
