"""Chat messages (or /api/generate's prompt) rendered into one prompt text, whatever the
engine: ``template`` (the protocol), ``jinja`` (a GGUF's template), ``builtin`` (formats for
GGUFs without one), ``go_translate`` + ``go_execute`` (Ollama's Go templates). Tokenizing
and fitting the text into the context is the engine's (``worker.llama.prompt``)."""
