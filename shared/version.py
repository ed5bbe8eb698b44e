"""The package version, as installed."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("llama-herd")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0"
