"""Models written into a store (``shared.store``) as Ollama lays them out, for the tests of
serving them: a manifest of a GGUF layer, Modelfile layers and a config blob."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from shared.store import Config, Layer, Manifest, MediaType, Store, StoredModel


def add_model(
    store: Store,
    name: str,
    weights: Path,
    *,
    template: str | None = None,
    system: str | None = None,
    params: dict[str, Any] | None = None,
    licenses: tuple[str, ...] = (),
    messages: list[dict[str, str]] | None = None,
    family: str = "llama",
    parameter_size: str = "1.2M",
    quantization: str = "F32",
) -> StoredModel:
    """Write ``name``'s blobs and manifest (layers in Ollama's order)."""

    def layer(kind: MediaType, data: bytes) -> Layer:
        return Layer(media_type=kind, digest=store.write_bytes(data), size=len(data))

    layers = [layer(MediaType.MODEL, weights.read_bytes())]
    if template is not None:
        layers.append(layer(MediaType.TEMPLATE, template.encode()))
    if system is not None:
        layers.append(layer(MediaType.SYSTEM, system.encode()))
    if params is not None:
        layers.append(layer(MediaType.PARAMS, orjson.dumps(params)))
    for text in licenses:
        layers.append(layer(MediaType.LICENSE, text.encode()))
    if messages is not None:
        layers.append(layer(MediaType.MESSAGES, orjson.dumps(messages)))
    config = Config(
        model_family=family,
        model_families=[family],
        model_type=parameter_size,
        file_type=quantization,
    )
    manifest = Manifest(
        config=layer(MediaType.CONFIG, config.model_dump_json().encode()), layers=layers
    )
    return store.write_manifest(name, manifest)
