"""The dead-letter stream (``worker.poison``): GET /api/dlq lists the jobs set aside,
DELETE /api/dlq/{id} drops one, POST /api/dlq/{id}/retry runs one again and answers with
what it produced (``herd dlq``). Admin routes."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Response
from pydantic import ValidationError

from api.dispatch import stamp
from api.state import StateDep
from shared import keys
from shared.errors import HerdError, InvalidRequest, ModelNotFound
from shared.messages import DoneEvent, GenerateJob, TokenEvent

router = APIRouter()

NOT_FOUND = "no such entry in the dead-letter stream"
#: A stream entry id; anything else names no entry (and Redis would refuse it).
ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


def _checked(entry_id: str) -> str:
    if not ENTRY_ID.fullmatch(entry_id):
        raise ModelNotFound(NOT_FOUND)  # the one 404 of the error table
    return entry_id


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    try:
        job: dict[str, Any] = orjson.loads(fields.get(b"job", b"{}"))
    except orjson.JSONDecodeError:
        job = {}
    return {
        "id": entry_id.decode(),
        "model": job.get("model", ""),
        "kind": job.get("kind", ""),
        "request_id": job.get("request_id", ""),
        "attempts": int(fields.get(b"attempts", b"0")),
        "last_worker": fields.get(b"last_worker", b"").decode(),
        "at_ms": int(fields.get(b"at_ms", b"0")),
    }


@router.get("/api/dlq")
async def listing(state: StateDep) -> dict[str, list[dict[str, Any]]]:
    entries = await state.redis.xrange(keys.DEAD_LETTERS, count=keys.DEAD_LETTERS_MAXLEN)
    return {"entries": [_entry(entry_id, fields) for entry_id, fields in entries]}


@router.delete("/api/dlq/{entry_id}")
async def drop(entry_id: str, state: StateDep) -> Response:
    if not await state.redis.xdel(keys.DEAD_LETTERS, _checked(entry_id)):
        raise ModelNotFound(NOT_FOUND)  # the one 404 of the error table
    return Response(status_code=200)


@router.post("/api/dlq/{entry_id}/retry")
async def retry(entry_id: str, state: StateDep) -> dict[str, Any]:
    """Run the job again as a fresh request (it leaves the stream first; should it stop
    workers again it is set aside again) and answer with its text and done reason."""
    entry_id = _checked(entry_id)
    found = await state.redis.xrange(keys.DEAD_LETTERS, entry_id, entry_id)
    if not found:
        raise ModelNotFound(NOT_FOUND)  # the one 404 of the error table
    try:
        job = GenerateJob.from_fields(found[0][1])
    except (ValidationError, KeyError):
        raise InvalidRequest("the entry holds no valid job") from None
    await state.redis.xdel(keys.DEAD_LETTERS, entry_id)
    text: list[str] = []
    async with state.dispatcher.submit(stamp(job, state.settings.queue_timeout_s)) as events:
        async for event in events:
            if isinstance(event, TokenEvent):
                text.append(event.text)
            elif isinstance(event, DoneEvent):
                return {"done": True, "done_reason": event.done_reason, "response": "".join(text)}
    raise HerdError("the job produced no response")
