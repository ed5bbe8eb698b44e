"""A pull's progress lines in Redis, as the worker writes them and the API reads them.

Each line (Ollama's ``api.ProgressResponse``, or ``{"error": ...}``) is ``PUBLISH``ed on
``keys.pull_progress(model)`` and ``XADD``ed to the stream of the same name, tagged with the
pull's ``run`` token (the API's, carried in the job's arguments): a client that comes later,
or again, reads the stream from the start and keeps the lines of the run it follows, never
those of an earlier pull of the same model still kept there.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from shared import keys

#: The arq function name of a pull (``worker.pulls``); the API enqueues it by name.
FUNCTION = "pull_model"
#: A running pull's stream lives this long past its last line.
KEEP_WHILE_S = 3600
#: Once a pull ended, its stream is kept this long for clients that reconnect.
KEEP_AFTER_S = 300
#: Progress lines kept per stream (a very long pull loses its oldest ones).
MAXLEN = 10_000


def is_terminal(line: dict[str, Any]) -> bool:
    return "error" in line or line.get("status") == "success"


def decode(fields: dict[bytes, bytes]) -> tuple[str, dict[str, Any]]:
    """(run, line) of a stream entry."""
    line: dict[str, Any] = orjson.loads(fields[b"line"])
    return fields.get(b"run", b"").decode(), line


class Reporter:
    """The worker's side: sends one pull's lines."""

    def __init__(self, redis: Redis, model: str, run: str) -> None:
        self._redis = redis
        self._key = keys.pull_progress(model)
        self._run = run

    async def send(self, line: dict[str, Any]) -> None:
        data = orjson.dumps(line)
        keep = KEEP_AFTER_S if is_terminal(line) else KEEP_WHILE_S
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self._key, {"run": self._run, "line": data}, maxlen=MAXLEN, approximate=True)
            pipe.expire(self._key, keep)
            pipe.publish(self._key, data)
            await pipe.execute()
