"""The worker process: claims jobs from model streams and runs them on an Engine."""
