"""Herd's errors, their HTTP status table, and the message texts Ollama clients expect.

::

    HerdError                      error_type → status (STATUS)
    ├── InvalidRequest             400
    ├── ModelNotFound              404
    ├── Unavailable                503  (no worker, queue full, worker lost)
    ├── QueueTimeout               503
    ├── Cancelled                  499
    ├── PayloadTooLarge            413
    ├── EngineFailure              500
    ├── NoModelStore               501  (this API process has no HERD_MODELS_DIR)
    ├── Unauthorized               401  (API keys: none, or not one of them)
    ├── Forbidden                  403  (API keys: the key lacks the route's scope)
    └── TooManyRequests            429  (API keys: a key's limit; with Retry-After)

A worker turns a raised ``HerdError`` into an ``ErrorEvent``; the API turns the event back
into the same class, and one handler renders Ollama's ``{"error": message}``.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorType(StrEnum):
    INVALID_REQUEST = "invalid_request"
    MODEL_NOT_FOUND = "model_not_found"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    TOO_LARGE = "too_large"
    NO_MEMORY = "no_memory"
    INTERNAL = "internal"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    NO_STORE = "no_store"


STATUS: dict[ErrorType, int] = {
    ErrorType.INVALID_REQUEST: 400,
    ErrorType.MODEL_NOT_FOUND: 404,
    ErrorType.UNAVAILABLE: 503,
    ErrorType.TIMEOUT: 503,
    ErrorType.CANCELLED: 499,
    ErrorType.TOO_LARGE: 413,
    ErrorType.NO_MEMORY: 507,
    ErrorType.INTERNAL: 500,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.FORBIDDEN: 403,
    ErrorType.RATE_LIMITED: 429,
    ErrorType.NO_STORE: 501,
}


class HerdError(Exception):
    error_type = ErrorType.INTERNAL

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Sent as ``Retry-After`` (a busy queue): when a client may usefully try again.
        self.retry_after_s = retry_after_s

    @property
    def status(self) -> int:
        return STATUS[self.error_type]

    @property
    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class InvalidRequest(HerdError):
    error_type = ErrorType.INVALID_REQUEST


class ModelNotFound(HerdError):
    error_type = ErrorType.MODEL_NOT_FOUND

    @classmethod
    def named(cls, name: str) -> ModelNotFound:
        """The text of generate, chat, show and delete (``model 'x' not found``)."""
        return cls(f"model '{name}' not found")


class Unavailable(HerdError):
    error_type = ErrorType.UNAVAILABLE


class QueueTimeout(HerdError):
    error_type = ErrorType.TIMEOUT


class Cancelled(HerdError):
    error_type = ErrorType.CANCELLED


class PayloadTooLarge(HerdError):
    error_type = ErrorType.TOO_LARGE


class InsufficientMemory(HerdError):
    """The model needs more memory than any worker that has it could ever give it."""

    error_type = ErrorType.NO_MEMORY


class EngineFailure(HerdError):
    error_type = ErrorType.INTERNAL


class NoModelStore(HerdError):
    """A model-store route (blobs, create) on an API process without ``HERD_MODELS_DIR``:
    501, a configuration to fix rather than a state to wait out (which 503 would say)."""

    error_type = ErrorType.NO_STORE


_BY_TYPE: dict[ErrorType, type[HerdError]] = {
    cls.error_type: cls
    for cls in (
        InvalidRequest,
        ModelNotFound,
        Unavailable,
        QueueTimeout,
        Cancelled,
        PayloadTooLarge,
        InsufficientMemory,
        EngineFailure,
        NoModelStore,
    )
}


def from_type(error_type: ErrorType, message: str) -> HerdError:
    """Rebuild the error a worker reported."""
    return _BY_TYPE[error_type](message)


#: Ollama's texts, kept verbatim (clients and scripts match on them).
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
WORKER_LOST = (
    "model runner has unexpectedly stopped, this may be due to resource limitations "
    "or an internal error, check ollama server logs for details"
)
MODEL_REQUIRED = "model is required"
BODY_TOO_LARGE = "request body too large"
NO_STORE = "this server has no model store (set HERD_MODELS_DIR)"


class Unauthorized(HerdError):
    """No API key, or not one of the configured ones (the API's own; never from a worker)."""

    error_type = ErrorType.UNAUTHORIZED

    @property
    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(HerdError):
    """A valid API key without the scope its route needs."""

    error_type = ErrorType.FORBIDDEN


class TooManyRequests(HerdError):
    """A key over one of its limits; ``retry_after_s`` says when to try again."""

    error_type = ErrorType.RATE_LIMITED


UNAUTHORIZED = "unauthorized"
#: Redis cannot be reached (503 with ``Retry-After: 1``; mid-stream, the last line).
REDIS_UNAVAILABLE = "redis unavailable: {reason}"
#: A ``context`` token id outside the model's vocabulary (the API checks what its advert
#: tells, the worker the rest): a 400, never an id handed to llama.cpp.
BAD_CONTEXT_TOKEN = "invalid context: token id {token} is not in the model's vocabulary"
