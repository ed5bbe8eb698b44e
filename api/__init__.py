"""The stateless API process: Ollama's HTTP API in front of the Redis job streams."""
