"""The registry side of a pull: where a model's manifest and blobs are, and the manifest.

``[scheme://]host/namespace/model:tag`` maps to ``<scheme>://<host>/v2/<namespace>/<model>/
manifests/<tag>`` and ``…/blobs/<digest>`` (Ollama's ``server/images.go``). https is the
default; http only with ``insecure`` (which also turns https into http, as Ollama does).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from shared import names
from shared.store import Manifest
from shared.store.manifest import MANIFEST_MEDIA_TYPE

#: Ollama's texts, kept verbatim.
INSECURE = "insecure protocol http"
MANIFEST_MISSING = "pull model manifest: file does not exist"


class PullFailed(Exception):
    """A pull that cannot succeed by trying again; the text is what the client sees."""


class Transient(Exception):
    """A failure worth a retry (the network, a 5xx): the pull resumes later."""


@dataclass(frozen=True)
class Remote:
    """One model on one registry."""

    base: str  # scheme://host[:port]
    namespace: str
    model: str
    tag: str

    def manifest_url(self) -> str:
        return f"{self.base}/v2/{self.namespace}/{self.model}/manifests/{self.tag}"

    def blob_url(self, digest: str) -> str:
        return f"{self.base}/v2/{self.namespace}/{self.model}/blobs/{digest}"


def remote(name: str, *, insecure: bool) -> Remote:
    """Where ``name`` lives; raises ``PullFailed`` for http without ``insecure``."""
    parsed = names.parse(name)
    scheme, sep, _ = name.partition("://")
    scheme = scheme.lower() if sep else "https"
    if scheme == "http" and not insecure:
        raise PullFailed(INSECURE)
    if insecure:
        scheme = "http"
    return Remote(f"{scheme}://{parsed.host}", parsed.namespace, parsed.model, parsed.tag)


def check_status(response: httpx.Response, what: str) -> None:
    """A 5xx or 429 is transient; any other error status ends the pull."""
    code = response.status_code
    if code < 400:
        return
    if code >= 500 or code == 429:
        raise Transient(f"{what}: registry answered {code}")
    raise PullFailed(f"{what}: registry answered {code}")


async def fetch_manifest(client: httpx.AsyncClient, where: Remote) -> Manifest:
    """The model's manifest; an unknown model is Ollama's ``file does not exist``."""
    try:
        response = await client.get(where.manifest_url(), headers={"Accept": MANIFEST_MEDIA_TYPE})
    except httpx.TransportError as exc:
        raise Transient(f"pull model manifest: {exc!r}") from exc
    if response.status_code == 404:
        raise PullFailed(MANIFEST_MISSING)
    check_status(response, "pull model manifest")
    try:
        return Manifest.read(response.content)
    except ValidationError as exc:
        raise PullFailed("pull model manifest: invalid manifest") from exc
