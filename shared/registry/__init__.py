"""Pulling models from an Ollama (Docker v2) registry into the store.

``client``: names to registry URLs, the manifest; ``download``: one blob, in ranged parts
that resume; ``lock``: one download of a blob in the cluster at a time; ``progress``: the
progress lines of a pull, as a stream and a channel in Redis (the API reads them too).
"""
