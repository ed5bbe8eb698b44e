"""``OLLAMA_HOST``'s format: ``[scheme://]host[:port]``, default ``http://127.0.0.1:11434``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORT = 11434
_SCHEME_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class HostAddress:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


def parse_host(value: str) -> HostAddress:
    """Parse like Ollama's ``envconfig.Host``: a given scheme without port means 80/443."""
    value = value.strip().strip("\"'")
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "http", value
    default_port = _SCHEME_PORTS.get(scheme, DEFAULT_PORT) if sep else DEFAULT_PORT
    parts = urlsplit(f"//{rest}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid port in host {value!r}") from exc
    return HostAddress(
        scheme=scheme or "http",
        host=parts.hostname or "127.0.0.1",
        port=port if port is not None else default_port,
    )
