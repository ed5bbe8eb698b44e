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
from shared.errors import InvalidRequest
from shared.store import Manifest, canonical_digest
from shared.store.manifest import MANIFEST_MEDIA_TYPE

#: Ollama's texts, kept verbatim.
INSECURE = "insecure protocol http"
MANIFEST_MISSING = "pull model manifest: file does not exist"
INVALID_MANIFEST = "pull model manifest: invalid manifest"
#: A manifest is a few KiB: a registry sending more is refused (never read into memory).
MAX_MANIFEST_BYTES = 4 << 20


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


def request_failed(what: str, exc: httpx.RequestError) -> Exception:
    """What a failed request becomes: a redirect loop, a scheme httpx cannot speak or a body
    it cannot decode will not mend by trying again; the network may."""
    if isinstance(exc, httpx.TooManyRedirects | httpx.UnsupportedProtocol | httpx.DecodingError):
        return PullFailed(f"{what}: {exc}")
    return Transient(f"{what}: {exc!r}")


def check_scheme(url: str, response: httpx.Response, what: str) -> None:
    """An https request redirected to http is refused: the bytes could be anyone's (a pull
    with ``insecure`` asks for http from the start, so it is never refused)."""
    if url.startswith("https://") and response.url.scheme != "https":
        raise PullFailed(f"{what}: the registry redirected https to {response.url.scheme}")


async def read_capped(response: httpx.Response, limit: int) -> bytes | None:
    """A streamed response's body, or None if it is longer than ``limit`` bytes (read no
    further than that: a hostile registry cannot fill the worker's memory)."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return None
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def fetch_manifest(client: httpx.AsyncClient, where: Remote) -> Manifest:
    """The model's manifest; an unknown model is Ollama's ``file does not exist``."""
    what = "pull model manifest"
    url = where.manifest_url()
    try:
        async with client.stream("GET", url, headers={"Accept": MANIFEST_MEDIA_TYPE}) as response:
            check_scheme(url, response, what)
            if response.status_code == 404:
                raise PullFailed(MANIFEST_MISSING)
            check_status(response, what)
            raw = await read_capped(response, MAX_MANIFEST_BYTES)
    except httpx.RequestError as exc:
        raise request_failed(what, exc) from exc
    if raw is None:
        raise PullFailed(f"{what}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = Manifest.read(raw)
        # a digest names a file of the store and a URL of the registry: it must be one
        if any(canonical_digest(layer.digest) != layer.digest for layer in manifest.blobs()):
            raise PullFailed(INVALID_MANIFEST)
    except (ValidationError, InvalidRequest) as exc:
        raise PullFailed(INVALID_MANIFEST) from exc
    return manifest
