"""Code that both the API and the workers use: settings, Redis keys, wire messages, errors."""
