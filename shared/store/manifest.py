"""A model's manifest and config blob, as Ollama's registry and ``ollama create`` write them
(Docker's image manifest v2 with Ollama's layer media types)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
#: The largest metadata layer (template, system, license, params, messages, config) a pull
#: takes or a worker reads: they are read whole into memory, unlike the weights.
MAX_METADATA_BYTES = 16 << 20


class MediaType(StrEnum):
    CONFIG = "application/vnd.docker.container.image.v1+json"
    MODEL = "application/vnd.ollama.image.model"
    ADAPTER = "application/vnd.ollama.image.adapter"
    PROJECTOR = "application/vnd.ollama.image.projector"
    TEMPLATE = "application/vnd.ollama.image.template"
    SYSTEM = "application/vnd.ollama.image.system"
    PARAMS = "application/vnd.ollama.image.params"
    MESSAGES = "application/vnd.ollama.image.messages"
    LICENSE = "application/vnd.ollama.image.license"


class Layer(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int = Field(ge=0)  # a negative size would pass every "too large" check
    #: Ollama records where a layer came from (``from``); kept as read.
    source: str | None = Field(None, alias="from")


#: Layers read whole (``MAX_METADATA_BYTES`` at most), not mapped by the engine.
METADATA_TYPES: frozenset[str] = frozenset(
    {
        MediaType.CONFIG,
        MediaType.TEMPLATE,
        MediaType.SYSTEM,
        MediaType.PARAMS,
        MediaType.MESSAGES,
        MediaType.LICENSE,
    }
)


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    schema_version: int = Field(2, alias="schemaVersion")
    media_type: str = Field(MANIFEST_MEDIA_TYPE, alias="mediaType")
    config: Layer
    layers: list[Layer]
    #: The bytes it was read from (a registry's): written as they are, so the manifest's
    #: digest (what /api/tags shows) is the registry's, as with Ollama.
    _raw: bytes | None = PrivateAttr(None)

    @classmethod
    def read(cls, raw: bytes) -> Manifest:
        manifest = cls.model_validate_json(raw)
        manifest._raw = raw
        return manifest

    def blobs(self) -> list[Layer]:
        """The config and every layer: what the manifest needs in ``blobs/``."""
        return [self.config, *self.layers]

    def size(self) -> int:
        """Ollama's model size: every layer and the config."""
        return sum(layer.size for layer in self.blobs())

    def layer(self, media_type: MediaType) -> Layer | None:
        """The last layer of a kind (a later one overrides an earlier, as in Ollama)."""
        found = [layer for layer in self.layers if layer.media_type == media_type]
        return found[-1] if found else None

    def dump(self) -> bytes:
        # the bytes as read, unless the manifest was changed since
        if self._raw is not None and Manifest.read(self._raw) == self:
            return self._raw
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class Config(BaseModel):
    """The config blob: what ``/api/tags`` and ``/api/show`` report as ``details``."""

    model_config = ConfigDict(extra="allow")

    model_format: str = "gguf"
    model_family: str = ""
    model_families: list[str] | None = None
    model_type: str = ""
    file_type: str = ""
    architecture: str = "amd64"
    os: str = "linux"
    rootfs: dict[str, Any] = Field(default_factory=lambda: {"type": "layers", "diff_ids": []})
