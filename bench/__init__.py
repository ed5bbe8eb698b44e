"""Benchmarks: Herd measured side by side with llama-cpp-python on the same model."""
