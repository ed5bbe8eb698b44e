"""Model names as Ollama spells them: ``name[:tag]``, case-insensitive, tag ``latest``."""

from __future__ import annotations

import re

from shared.errors import InvalidRequest

_VALID = re.compile(r"^[a-z0-9][a-z0-9._\-/]{0,127}(:[a-z0-9][a-z0-9._\-]{0,127})?$")


def normalize(name: str) -> str:
    """Lower-case and give the default tag; raise for a name Ollama would refuse."""
    name = name.strip().lower()
    if not _VALID.match(name) or ".." in name:
        raise InvalidRequest("invalid model name")
    return name if ":" in name else f"{name}:latest"
