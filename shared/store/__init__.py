"""The model store, in Ollama's own on-disk layout (``HERD_MODELS_DIR``)::

    manifests/<host>/<namespace>/<model>/<tag>   a JSON manifest: config + layers, by digest
    blobs/sha256-<hex>                           every layer and config, by content

An operator can point Herd at an existing Ollama models directory. Blobs are written to a
``-partial`` file while hashed and renamed into place only once their sha256 matches, so a
blob that is visible is whole; manifests are written to a temporary file and renamed.
"""

from shared.store.blobs import DigestMismatch, canonical_digest
from shared.store.manifest import Config, Layer, Manifest, MediaType
from shared.store.store import Store, StoredModel

__all__ = [
    "Config",
    "DigestMismatch",
    "Layer",
    "Manifest",
    "MediaType",
    "Store",
    "StoredModel",
    "canonical_digest",
]
