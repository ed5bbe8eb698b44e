"""The Redis key-space: every key, stream, group and channel name, and every TTL.

No other module spells a key. Model names are normalised (``shared.names``) before they
reach a builder, so ``gemma3`` and ``gemma3:latest`` share one stream.
"""

from __future__ import annotations

PREFIX = "herd"

#: Consumer group of the workers on every model stream.
JOB_GROUP = "herd-workers"
#: Sorted set of live workers, scored by the unix time (s) their advert expires.
WORKERS_INDEX = f"{PREFIX}:workers"

#: A cancel marker outlives any job that could still be queued for it.
CANCEL_TTL_S = 3600
#: Streams are trimmed approximately to this many entries (acknowledged work is history).
STREAM_MAXLEN = 10_000
#: A worker's XREADGROUP blocks at most this long, well below any socket timeout.
BLOCK_MS = 1000


def job_stream(model: str) -> str:
    """The stream that carries the jobs of one model."""
    return f"{PREFIX}:jobs:{model}"


def token_channel(request_id: str) -> str:
    """The pub/sub channel on which a request's chunk events arrive."""
    return f"{PREFIX}:tok:{request_id}"


def cancel_key(request_id: str) -> str:
    """Set when the client went away: a queued job with this marker is never run."""
    return f"{PREFIX}:cancel:{request_id}"


def progress(request_id: str) -> str:
    """The token ids of a continuable answer so far (int32s, appended as chunks go out),
    for the worker that takes over from a dead one; it expires like a cancel marker."""
    return f"{PREFIX}:progress:{request_id}"


def worker_key(worker_id: str) -> str:
    """A worker's advert (JSON), expiring on its own when the heartbeat stops."""
    return f"{PREFIX}:worker:{worker_id}"


#: Hash: a name made by /api/copy -> the served model it stands for.
CATALOG_ALIASES = f"{PREFIX}:catalog:aliases"
#: Set: served models that /api/delete removed from the catalog.
CATALOG_DELETED = f"{PREFIX}:catalog:deleted"


#: Counter: bumped after every change to a model store (pull, create, copy, delete); a
#: worker whose last look saw another value rescans its store.
STORE_VERSION = f"{PREFIX}:store:version"
#: Hash: a model pulled from a registry -> where from (JSON ``{"insecure": bool}``). A worker
#: with a store of its own pulls such a model itself when placement has it load one it
#: lacks (no shared volume: the model was pulled into another worker's store).
STORE_SOURCES = f"{PREFIX}:store:sources"
#: arq's queue of model pulls (any worker that can write a store takes them).
PULL_QUEUE = f"{PREFIX}:arq:pulls"


#: Where arq's pull workers record their health (a pull with none of them gets 503).
PULL_HEALTH = f"{PULL_QUEUE}:health-check"


def blob_lock(digest: str) -> str:
    """Held by the pull downloading a blob: another pull of it waits and follows."""
    return f"{PREFIX}:pull:blob:{digest}"


def pull_job_id(model: str) -> str:
    """The arq job id of a model's pull: one pull per model at a time."""
    return f"pull:{model}"


def pull_progress(model: str) -> str:
    """A pull's progress: pub/sub channel of progress lines, and (same name) the stream of
    them kept while it runs, so a client that reconnects sees it finish."""
    return f"{PREFIX}:pull:{model}"


def control_stream(worker_id: str) -> str:
    """A worker's own stream of control messages (unload a model)."""
    return f"{PREFIX}:ctl:{worker_id}"


def model_info(digest: str) -> str:
    """A model's full GGUF metadata (JSON) for /api/show with ``verbose``."""
    return f"{PREFIX}:modelinfo:{digest}"


def load_ticket(model: str) -> str:
    """Hash of the tickets to load ``model``: worker -> expiry (ms); as many live ones as
    loads a plan allowed (``worker.placement.tickets``)."""
    return f"{PREFIX}:placing:{model}"


#: Hash: model -> its replica policy (JSON ``shared.messages.ReplicaPolicy``).
POLICIES = f"{PREFIX}:policy"


# api catalog of models seen
#: Hash: every model a live worker has advertised -> its ``ModelAdvert`` (JSON). Written by
#: the API when a model is new or its digest changed; a model stays known (its requests
#: queue instead of 404) while no worker that serves it is up.
CATALOG_SEEN = f"{PREFIX}:catalog:seen"


def worker_jobs(worker_id: str) -> str:
    """Jobs routed to one worker because it holds their conversation's prefix in KV cache."""
    return f"{PREFIX}:jobs@{worker_id}"


def prefix_owner(digest: str) -> str:
    """The worker that last answered a conversation (``shared.prefix``): its KV cache holds it."""
    return f"{PREFIX}:prefix:{digest}"


#: A conversation's owner is remembered this long (a model's default keep_alive, doubled).
PREFIX_TTL_S = 600


#: Stream of jobs set aside as poison (their runs killed ``HERD_MAX_ATTEMPTS`` workers).
DEAD_LETTERS = f"{PREFIX}:dlq"
#: The dead-letter stream keeps at most about this many entries.
DEAD_LETTERS_MAXLEN = 1000
