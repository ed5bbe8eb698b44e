"""Publishing one job's chunk events, numbered, on its request's token channel.

Every job of a worker publishes through one ``Batcher``: the PUBLISHes that jobs queue
while the event loop runs (a batch step hands a token to every running sequence at once)
go to Redis in one pipeline, one write and one read, not a round trip each. A job awaits
its PUBLISH before it sends the next, so a channel's events keep their order.

A continuable job (``GenerateJob.continuable``) also records its answer's token ids in
``keys.progress``, in the same pipeline and before the PUBLISH of the chunk that covers
them: whatever a client received, the ids are there for a worker that takes over (and the
chunk says how many, ``covered``, so the API can tell that it goes on from the right one).
The record's expiry is set with its first ids and renewed every ``EXPIRY_RENEW_S``, not
with every token's APPEND.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Sequence
from typing import Literal

from redis.asyncio import Redis

from shared import keys
from shared.errors import ErrorType
from shared.messages import (
    DoneEvent,
    ErrorEvent,
    Logprob,
    StartedEvent,
    TokenEvent,
    ToolCall,
    encode_event,
)
from worker.engine import Finish

#: How often a progress record's expiry (``keys.CANCEL_TTL_S``) is set again while its job
#: runs: far inside the TTL, so a long answer's record never expires under it.
EXPIRY_RENEW_S = 60.0


class Batcher:
    """PUBLISH, sent together with whatever else was queued in the same loop turn."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._queued: list[tuple[str, bytes, _Record | None, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def publish(self, channel: str, message: bytes, record: _Record | None = None) -> int:
        """How many subscribers received ``message``; ``record`` (key, bytes to append
        or None to delete the key, whether to set its expiry) is written first."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queued.append((channel, message, record, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # let the other ready jobs queue theirs
            while self._queued:
                queued, self._queued = self._queued, []
                try:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for channel, message, record, _ in queued:
                            if record is not None:
                                key, data, expire = record
                                if data is None:
                                    pipe.delete(key)
                                else:
                                    pipe.append(key, data)
                                    if expire:
                                        pipe.expire(key, keys.CANCEL_TTL_S)
                            pipe.publish(channel, message)
                        replies = await pipe.execute()
                    flags = _publishes(queued)
                    counts = [r for r, flag in zip(replies, flags, strict=True) if flag]
                except Exception as exc:  # each waiting job hears of it
                    for *_, future in queued:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (*_, future), receivers in zip(queued, counts, strict=True):
                    if not future.done():
                        future.set_result(int(receivers))
        finally:
            self._flusher = None


#: What a ``Batcher.publish`` writes before its message: (key, bytes to append, whether to
#: set the key's expiry too) or (key, None, False): delete it.
_Record = tuple[str, bytes | None, bool]


def _publishes(queued: list[tuple[str, bytes, _Record | None, asyncio.Future[int]]]) -> list[bool]:
    """For each reply of a flushed pipeline, whether it is a PUBLISH's."""
    flags: list[bool] = []
    for _, _, record, _ in queued:
        if record is not None:
            flags += [False] if record[1] is None else [False, False] if record[2] else [False]
        flags.append(True)
    return flags


def pack(tokens: Sequence[int]) -> bytes:
    return array("i", tokens).tobytes()


def unpack(data: bytes) -> list[int]:
    ids = array("i")
    ids.frombytes(data[: len(data) - len(data) % ids.itemsize])
    return ids.tolist()


class Publisher:
    def __init__(
        self, client: Batcher, request_id: str, attempt: int, *, continuable: bool = False
    ) -> None:
        self._client = client
        self._channel = keys.token_channel(request_id)
        self._progress = keys.progress(request_id) if continuable else None
        self.request_id = request_id
        self.attempt = attempt
        self._seq = 0
        #: The answer's tokens recorded so far (over every attempt).
        self.covered = 0
        #: When the progress record's expiry is due to be set again (monotonic; 0: now).
        self._renew_at = 0.0

    def _next(self) -> int:
        seq, self._seq = self._seq, self._seq + 1
        return seq

    async def _publish(
        self,
        event: StartedEvent | TokenEvent | DoneEvent | ErrorEvent,
        record: _Record | None = None,
    ) -> int:
        receivers: int = await self._client.publish(self._channel, encode_event(event), record)
        return receivers

    async def started(self, worker_id: str, load_ns: int = 0, resumed_at: int = 0) -> int:
        """Returns how many API processes listen: 0 means nobody waits for this job.
        ``resumed_at``: a continuation, going on after that many tokens of the answer.
        Always an attempt's first event: announced again, it keeps its number."""
        self.covered, self._seq = resumed_at, 0
        return await self._publish(
            StartedEvent(
                request_id=self.request_id,
                attempt=self.attempt,
                seq=self._next(),
                worker_id=worker_id,
                load_ns=load_ns,
                resumed_at=resumed_at,
            )
        )

    async def token(
        self,
        text: str = "",
        *,
        thinking: str = "",
        tool_calls: list[ToolCall] | None = None,
        logprobs: list[Logprob] | None = None,
        tokens: Sequence[int] = (),
    ) -> int:
        """``tokens``: the answer's token ids generated since the last chunk."""
        record: _Record | None = None
        if self._progress is not None and tokens:
            now = time.monotonic()
            expire = now >= self._renew_at
            if expire:
                self._renew_at = now + EXPIRY_RENEW_S
            record = (self._progress, pack(tokens), expire)
            self.covered += len(tokens)  # counted only where recorded: 0 says "no going on"
        return await self._publish(
            TokenEvent(
                request_id=self.request_id,
                attempt=self.attempt,
                seq=self._next(),
                text=text,
                thinking=thinking,
                tool_calls=tool_calls or None,
                logprobs=logprobs or None,
                covered=self.covered,
            ),
            record,
        )

    async def done(self, finish: Finish) -> None:
        await self._done(
            done_reason=finish.done_reason,
            n_prompt_tokens=finish.n_prompt_tokens,
            n_decoded=finish.n_decoded,
            prompt_eval_ns=finish.prompt_eval_ns,
            eval_ns=finish.eval_ns,
            context=finish.context,
        )

    async def loaded(self) -> None:
        """The answer to a load job (Ollama's ``done_reason: "load"``)."""
        await self._done(done_reason="load")

    async def embedded(self, vectors: list[list[float]], n_prompt_tokens: int, ns: int) -> None:
        await self._done(
            done_reason="stop",
            n_prompt_tokens=n_prompt_tokens,
            prompt_eval_ns=ns,
            embeddings=vectors,
        )

    async def _done(
        self,
        *,
        done_reason: Literal["stop", "length", "load"],
        n_prompt_tokens: int = 0,
        n_decoded: int = 0,
        prompt_eval_ns: int = 0,
        eval_ns: int = 0,
        context: list[int] | None = None,
        embeddings: list[list[float]] | None = None,
    ) -> None:
        await self._publish(
            DoneEvent(
                request_id=self.request_id,
                attempt=self.attempt,
                seq=self._next(),
                done_reason=done_reason,
                n_prompt_tokens=n_prompt_tokens,
                n_decoded=n_decoded,
                prompt_eval_ns=prompt_eval_ns,
                eval_ns=eval_ns,
                context=context,
                embeddings=embeddings,
            ),
            self._clear(),
        )

    async def error(self, error_type: ErrorType, message: str, *, clear: bool = True) -> None:
        """``clear``: the answer's progress record goes too (not when another worker may
        have taken the job over and write it now)."""
        await self._publish(
            ErrorEvent(
                request_id=self.request_id,
                attempt=self.attempt,
                seq=self._next(),
                error_type=error_type,
                message=message,
            ),
            self._clear() if clear else None,
        )

    def _clear(self) -> _Record | None:
        """The answer is over: its progress record goes with its last event."""
        return None if self._progress is None else (self._progress, None, False)
