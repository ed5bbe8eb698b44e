"""API keys: who may call which route, and how often.

Keys come from ``HERD_API_KEYS`` (comma-separated) and ``HERD_API_KEYS_FILE`` (one a line,
``#`` comments), each entry ``key`` or ``name:key[:scopes[:streams[:rpm]]]``:

- ``scopes``: ``inference`` (generate, chat, embed, everything under /v1), ``admin`` (copy,
  delete, scale, and pull, push, create, blobs, dlq when they exist), or both joined with
  ``+``; left out, both. Neither implies the other. The read-only routes (tags, ps, show,
  cluster, /v1/models) take a key of either scope. An unload (``keep_alive: 0``) is a
  generate or chat like a load, so it takes ``inference``.
- ``streams`` and ``rpm``: this key's limits on inference requests in flight and on
  requests per minute (left out: ``HERD_KEY_MAX_STREAMS``, ``HERD_KEY_REQUESTS_PER_MINUTE``;
  0: none). Limits are counted in each API process: with N API pods a key gets N times.

With keys set, every route but ``/``, ``/api/version``, ``/healthz``, ``/readyz``,
``/metrics`` and ``/status`` (a page without data; its polls send a key) needs
``Authorization: Bearer <key>``; a route nobody declared needs ``admin``, so one added
later is closed until it is classified here. Refusals: 401 (no key, or not one of them),
403 (the key lacks the scope), 429 with ``Retry-After`` (over a limit); in Ollama's
``{"error": ...}``, or OpenAI's error object under /v1.

Only each key's sha256 is kept (the settings keep the text, as a ``SecretStr``); a presented
key's hash is compared with every stored one with ``hmac.compare_digest``. A key is never
logged, not even in part; a key's name is.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import orjson
import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api.openai.responses import error_body
from shared.errors import UNAUTHORIZED, Forbidden, HerdError, TooManyRequests, Unauthorized
from shared.settings import Settings

log = structlog.get_logger()


class ApiScope(StrEnum):
    INFERENCE = "inference"
    ADMIN = "admin"


class Need(StrEnum):
    """What a route asks of a key."""

    NOTHING = "nothing"
    ANY = "any"
    INFERENCE = "inference"
    ADMIN = "admin"


EXEMPT = frozenset({"/", "/api/version", "/healthz", "/readyz", "/metrics", "/status"})
INFERENCE = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
READ_ONLY = frozenset({"/api/tags", "/api/ps", "/api/show", "/api/cluster", "/v1/models"})
#: Model management: admin (as every route not listed; named so that it stays so).
MODEL_MANAGEMENT = frozenset({"/api/pull", "/api/push", "/api/create"})


def need(path: str) -> Need:
    """The scope ``path`` needs; admin for anything not listed (unknown routes included)."""
    path = path.rstrip("/") or "/"
    if path in EXEMPT:
        return Need.NOTHING
    if path in MODEL_MANAGEMENT or path.startswith("/api/blobs/"):
        return Need.ADMIN
    if path in READ_ONLY or path.startswith("/v1/models/"):
        return Need.ANY
    if path in INFERENCE or path.startswith("/v1/"):
        return Need.INFERENCE
    return Need.ADMIN


class KeyConfigError(ValueError):
    """A malformed key entry. The text names the entry by its place, never by its content."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # sha256 of the key
    scopes: frozenset[ApiScope]
    max_streams: int  # 0: no limit
    requests_per_minute: int  # 0: no limit

    def allows(self, need: Need) -> bool:
        return need in (Need.NOTHING, Need.ANY) or ApiScope(need.value) in self.scopes


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SCOPE_SEPARATORS = re.compile(r"[+, ]+")


def _limit(text: str, default: int, where: str, what: str) -> int:
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        raise KeyConfigError(f"{where}: {what} must be a whole number (0: no limit)")
    return int(text)


def parse_entry(entry: str, *, where: str, default_name: str, settings: Settings) -> ApiKey:
    """One ``key`` or ``name:key[:scopes[:streams[:rpm]]]``; ``where`` places it in errors."""
    parts = [part.strip() for part in entry.split(":")]
    if len(parts) > 5:
        raise KeyConfigError(f"{where}: expected name:key[:scopes[:streams[:rpm]]]")
    if len(parts) == 1:
        parts = ["", *parts]
    name, key, scopes, streams, rpm = [*parts, "", "", ""][:5]
    if not key or any(c.isspace() for c in key):
        raise KeyConfigError(f"{where}: the key is empty or holds a space")
    if key in set(ApiScope):
        raise KeyConfigError(f"{where}: a scope where a key should be (join scopes with +)")
    name = name or default_name
    if not _NAME.fullmatch(name):
        raise KeyConfigError(f"{where}: a name is 1-64 letters, digits, '.', '_' or '-'")
    wanted = {part for part in _SCOPE_SEPARATORS.split(scopes) if part}
    if not wanted <= set(ApiScope):
        raise KeyConfigError(f"{where}: scopes are inference, admin, or both joined with +")
    return ApiKey(
        name=name,
        digest=digest(key),
        scopes=frozenset(ApiScope(s) for s in wanted) if wanted else frozenset(ApiScope),
        max_streams=_limit(streams, settings.key_max_streams, where, "streams"),
        requests_per_minute=_limit(rpm, settings.key_requests_per_minute, where, "rpm"),
    )


def _entries(settings: Settings) -> Iterable[tuple[str, str]]:
    """(where, entry) of every configured key."""
    if settings.api_keys is not None:
        text = settings.api_keys.get_secret_value()
        for n, entry in enumerate(text.split(","), 1):
            if entry.strip():
                yield f"HERD_API_KEYS entry {n}", entry
    if settings.api_keys_file is not None:
        try:
            lines = settings.api_keys_file.read_text().splitlines()
        except OSError as exc:
            raise KeyConfigError(f"HERD_API_KEYS_FILE: cannot read it ({exc.strerror})") from None
        entries = [(n, line) for n, line in enumerate(lines, 1) if line.split("#", 1)[0].strip()]
        if not entries:
            # a mounted Secret that came out empty must not open the API
            raise KeyConfigError("HERD_API_KEYS_FILE holds no key")
        for n, line in entries:
            yield f"HERD_API_KEYS_FILE line {n}", line.split("#", 1)[0]


def load_keys(settings: Settings) -> list[ApiKey]:
    """Every configured key, hashed; [] when none is (the API stays open)."""
    keys: list[ApiKey] = []
    for n, (where, entry) in enumerate(_entries(settings), 1):
        key = parse_entry(entry, where=where, default_name=f"key-{n}", settings=settings)
        for other in keys:
            if other.name == key.name:
                raise KeyConfigError(f"{where}: the name {key.name} is taken by another key")
            if hmac.compare_digest(other.digest, key.digest):
                raise KeyConfigError(f"{where}: the same key as {other.name}")
        keys.append(key)
    return keys


class Keyring:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = tuple(keys)

    def match(self, presented: str) -> ApiKey | None:
        """The key whose hash is ``presented``'s; every stored hash is compared."""
        wanted = digest(presented)
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(wanted, key.digest):
                found = key
        return found


class Limits:
    """Per key, in this process: inference requests in flight, and a sliding one-minute
    window of request times (at most ``requests_per_minute`` of them are kept)."""

    WINDOW_S = 60.0

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}

    def admit(self, key: ApiKey, *, stream: bool, now: float | None = None) -> None:
        """Count one request of ``key`` (and take a stream slot), or raise TooManyRequests."""
        now = time.monotonic() if now is None else now
        if stream and key.max_streams and self._in_flight.get(key.name, 0) >= key.max_streams:
            raise TooManyRequests(
                f"too many requests: this API key already has {key.max_streams} in flight",
                retry_after_s=1,
            )
        if key.requests_per_minute:
            recent = self._recent.setdefault(key.name, deque())
            while recent and recent[0] <= now - self.WINDOW_S:
                recent.popleft()
            if len(recent) >= key.requests_per_minute:
                wait = max(1, math.ceil(recent[0] + self.WINDOW_S - now))
                raise TooManyRequests(
                    f"too many requests: this API key may make {key.requests_per_minute} a minute",
                    retry_after_s=wait,
                )
            recent.append(now)
        if stream:
            self._in_flight[key.name] = self._in_flight.get(key.name, 0) + 1

    def release(self, key: ApiKey) -> None:
        """A stream of ``key`` ended."""
        left = self._in_flight.get(key.name, 0) - 1
        if left > 0:
            self._in_flight[key.name] = left
        else:
            self._in_flight.pop(key.name, None)

    def in_flight(self, key: ApiKey) -> int:
        return self._in_flight.get(key.name, 0)


def bearer(scope: Scope) -> str | None:
    """The token of the one ``Authorization: Bearer <token>`` header; None for anything else."""
    values: list[bytes] = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        return None
    return token


def _refusal(path: str, exc: HerdError) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body and headers of ``exc``: Ollama's shape, or OpenAI's under /v1."""
    if path == "/v1" or path.startswith("/v1/"):
        payload = error_body(exc.status, exc.message)
        codes = {401: "invalid_api_key", 429: "rate_limit_exceeded"}
        payload["error"]["code"] = codes.get(exc.status)
    else:
        payload = {"error": exc.message}
    body = orjson.dumps(payload)
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
    return body, headers


class ApiKeys:
    """Checks the key of every request to a route that needs one (pure ASGI, so a stream's
    slot is held until its last byte is sent)."""

    def __init__(self, app: ASGIApp, keys: list[ApiKey]) -> None:
        self.app = app
        self.keyring = Keyring(keys)
        self.limits = Limits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        wanted = need(path)
        if wanted is Need.NOTHING:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websocket route is served with keys on
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            key = self._admit(scope, path, wanted)
        except HerdError as exc:
            body, headers = _refusal(path, exc)
            await send({"type": "http.response.start", "status": exc.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["api_key"] = key.name
        try:
            with structlog.contextvars.bound_contextvars(api_key=key.name):
                await self.app(scope, receive, send)
        finally:
            if wanted is Need.INFERENCE:
                self.limits.release(key)

    def _admit(self, scope: Scope, path: str, wanted: Need) -> ApiKey:
        token = bearer(scope)
        key = None if token is None else self.keyring.match(token)
        if key is None:
            reason = "missing" if token is None else "unknown key"
            if token is None and any(name == b"authorization" for name, _ in scope["headers"]):
                reason = "malformed"
            log.warning("unauthorized", path=path, reason=reason, client=_client(scope))
            raise Unauthorized(UNAUTHORIZED)
        if not key.allows(wanted):
            log.warning("forbidden", path=path, api_key=key.name, needs=wanted.value)
            raise Forbidden(f"forbidden: this API key lacks the {wanted.value} scope")
        try:
            self.limits.admit(key, stream=wanted is Need.INFERENCE)
        except TooManyRequests:
            log.info("rate_limited", path=path, api_key=key.name)
            raise
        return key


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def install(app: FastAPI, settings: Settings, *, loopback: bool) -> None:
    """Check API keys when some are configured; otherwise warn if the API is reachable
    from other machines (``loopback``: it is bound to a loopback address)."""
    keys = load_keys(settings)
    if keys:
        app.add_middleware(ApiKeys, keys=keys)
        log.info("api_keys", count=len(keys), names=[key.name for key in keys])
    elif not loopback:
        log.warning(
            "api_open",
            host=settings.host.host,
            hint="no API keys: anyone who can reach this address can use every route; "
            "set HERD_API_KEYS or HERD_API_KEYS_FILE",
        )
