"""HTTP conventions around every route, as Ollama's server applies them:

- CORS as ``gin-contrib/cors`` does it for Ollama: the configured origins plus local
  pages, desktop app and editor webview schemes and browser extensions; the headers the
  Ollama and OpenAI SDKs send. A request from any other origin is refused with 403 (not
  merely left without ``Access-Control-Allow-Origin``: a page must not be able to make a
  local server act, even blind), and a preflight is answered 204 — which is why this is
  not Starlette's ``CORSMiddleware`` (200 for preflights, other origins let through).
- The DNS-rebinding guard: bound to a loopback address, only requests whose ``Host`` is
  local get through; the rest get 403 with no body.
- A request body limit: 413 ``{"error": "request body too large"}`` before reading a body
  that announces itself too large, or as soon as a streamed one passes the limit; except
  a blob upload, which the store limits (``HERD_MAX_BLOB_BYTES``).
- API keys, when configured (``api.auth``): checked inside the host guard and CORS, before
  the body limit.
- Request ids: an ``X-Request-ID`` the client sends is kept (if it is a sane token), else
  one is made; it is returned in the response's headers, bound to every log line of the
  request, and carried in its job (``GenerateJob.trace_id``) to the worker's lines.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import uuid
from collections.abc import Iterable

import orjson
import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import auth
from shared.errors import BODY_TOO_LARGE, PayloadTooLarge
from shared.settings import Settings

LOCAL_ORIGINS = [
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for scheme in ("http", "https")
    for port in ("", ":*")
] + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
EXTENSION_SCHEMES = [
    "chrome-extension",
    "safari-extension",
    "moz-extension",
    "ms-browser-extension",
]
ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "User-Agent",
    "Accept",
    "X-Requested-With",
    # OpenAI SDKs
    "OpenAI-Beta",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
]
ALLOWED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


MAX_AGE_S = 12 * 3600


def origin_regex(origins: Iterable[str]) -> re.Pattern[str]:
    """One pattern for every allowed origin; ``*`` in an origin matches anything."""
    patterns = [re.escape(origin).replace(r"\*", ".*") for origin in [*origins, *LOCAL_ORIGINS]]
    patterns += [f"{scheme}://.*" for scheme in EXTENSION_SCHEMES]
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))


class Cors:
    """``gin-contrib/cors`` with Ollama's configuration."""

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self.app = app
        self._allowed = origin_regex(origins)
        self._preflight = [
            (b"access-control-allow-methods", ",".join(ALLOWED_METHODS).encode()),
            (b"access-control-allow-headers", ",".join(ALLOWED_HEADERS).encode()),
            (b"access-control-max-age", str(MAX_AGE_S).encode()),
            (b"vary", b"Origin"),
            (b"vary", b"Access-Control-Request-Method"),
            (b"vary", b"Access-Control-Request-Headers"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin", b"").decode("latin-1")
        host = headers.get(b"host", b"").decode("latin-1")
        if not origin or origin in (f"http://{host}", f"https://{host}"):
            await self.app(scope, receive, send)  # not a cross-origin request
            return
        if not self._allowed.fullmatch(origin):
            await _send(send, 403, b"", None)
            return
        allow = (b"access-control-allow-origin", origin.encode("latin-1"))
        if scope["method"] == "OPTIONS":
            await _send(send, 204, b"", None, extra=[allow, *self._preflight])
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), allow, (b"vary", b"Origin")]
            await send(message)

        await self.app(scope, receive, with_cors)


# Go's netip.Addr.IsPrivate: RFC 1918 and RFC 4193 only (Python's is_private is wider)
_PRIVATE = [
    ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
] + [ipaddress.ip_network("fc00::/7")]
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def _local_addresses() -> set[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return set()
    return {str(info[4][0]).split("%")[0] for info in infos}


#: An ``X-Request-ID`` kept as the client sent it; anything else is replaced by a fresh one.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    """Keep or make each request's id, log with it, and send it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class HostGuard:
    """``allowedHostsMiddleware``: a page on another site must not reach a local server
    through a DNS name it controls (DNS rebinding)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._hostname = socket.gethostname().lower()
        self._addresses = _local_addresses()

    def allowed(self, host_header: str) -> bool:
        host = host_header
        if host.startswith("["):  # [v6]:port
            host = host[1 : host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":")[0]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return (
                address.is_loopback
                or address.is_unspecified
                or any(address in net for net in _PRIVATE if net.version == address.version)
                or str(address) in self._addresses
            )
        host = host.lower()
        return host in ("", "localhost", self._hostname) or host.endswith(_LOCAL_SUFFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if not self.allowed(host):
            await _send(send, 403, b"", None)
            return
        if scope["method"] == "OPTIONS" and not _is_ip(host):
            await _send(send, 204, b"", None)
            return
        await self.app(scope, receive, send)


def _is_ip(host: str) -> bool:
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


#: ``POST /api/blobs/:digest``: a model file streamed to the store, which applies its own
#: limit (``HERD_MAX_BLOB_BYTES``) and never holds the body in memory.
BLOB_UPLOAD = re.compile(r"/api/blobs/[^/]+")


class BodyLimit:
    """Refuse bodies above ``max_bytes``: by ``Content-Length`` before reading, and by
    counting while a chunked body streams in (``PayloadTooLarge`` from ``receive``). A blob
    upload is exempt (``BLOB_UPLOAD``)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["method"] == "POST" and BLOB_UPLOAD.fullmatch(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send(send, 413, orjson.dumps({"error": BODY_TOO_LARGE}), b"application/json")
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(BODY_TOO_LARGE)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except PayloadTooLarge:
            # raised where no route's handler renders it (the routes' handler does)
            if started:
                raise
            body = orjson.dumps({"error": BODY_TOO_LARGE})
            await _send(send, 413, body, b"application/json")


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-length", str(len(body)).encode())] if status != 204 else []
    if content_type is not None:
        headers.append((b"content-type", content_type))
    headers += extra or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def install(app: FastAPI, settings: Settings) -> None:
    """The middlewares, innermost first: the body limit, API keys (``api.auth``), the host
    guard, then CORS (so a preflight from an allowed origin is answered before anything
    else, and a refusal still carries CORS headers a page can read), and around them all
    the request id (every answer carries one, every log line of the request too)."""
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    loopback = _loopback(settings.host.host)
    auth.install(app, settings, loopback=loopback)
    if loopback:
        app.add_middleware(HostGuard)
    app.add_middleware(Cors, origins=settings.origins)
    app.add_middleware(RequestIds)
