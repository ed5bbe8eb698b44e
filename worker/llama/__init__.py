"""The llama.cpp engine: the only package that imports ``llama_cpp``.

``engine`` (the ``Engine`` implementation), ``model`` (llama.cpp's model and context,
sized for the slots), ``batch`` (the scheduler: one thread per model, every running
sequence decoded together), ``outbox`` (its hand-off to the event loop), ``pieces`` (how a
prompt is cut into steps), ``sequence`` (one generation: prompt, sampler,
text), ``prompt`` (templates to tokens, truncation), ``sampling`` (Ollama's options as a
sampler chain, logprobs), ``grammar`` (``format`` to a grammar), ``embed`` (embeddings).
"""
