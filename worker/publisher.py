"""Publishing one job's chunk events, numbered, on its request's token channel."""

from __future__ import annotations

from redis.asyncio import Redis

from shared import keys
from shared.errors import ErrorType
from shared.messages import DoneEvent, ErrorEvent, StartedEvent, TokenEvent, encode_event
from worker.engine import Finish


class Publisher:
    def __init__(self, client: Redis, request_id: str, attempt: int) -> None:
        self._client = client
        self._channel = keys.token_channel(request_id)
        self.request_id = request_id
        self.attempt = attempt
        self._seq = 0
        #: True once the client may have seen text: such a job must never run again.
        self.sent_text = False

    def _next(self) -> int:
        seq, self._seq = self._seq, self._seq + 1
        return seq

    async def _publish(self, event: StartedEvent | TokenEvent | DoneEvent | ErrorEvent) -> int:
        receivers: int = await self._client.publish(self._channel, encode_event(event))
        return receivers

    async def started(self, worker_id: str) -> int:
        """Returns how many API processes listen: 0 means nobody waits for this job."""
        return await self._publish(
            StartedEvent(
                request_id=self.request_id,
                attempt=self.attempt,
                seq=self._next(),
                worker_id=worker_id,
            )
        )

    async def token(self, text: str) -> int:
        self.sent_text = True
        return await self._publish(
            TokenEvent(
                request_id=self.request_id, attempt=self.attempt, seq=self._next(), text=text
            )
        )

    async def done(self, finish: Finish) -> None:
        await self._publish(
            DoneEvent(
                request_id=self.request_id,
                attempt=self.attempt,
                seq=self._next(),
                done_reason=finish.done_reason,
                n_prompt_tokens=finish.n_prompt_tokens,
                n_decoded=finish.n_decoded,
                prompt_eval_ns=finish.prompt_eval_ns,
                eval_ns=finish.eval_ns,
                context=finish.context,
            )
        )

    async def error(self, error_type: ErrorType, message: str) -> None:
        await self._publish(
            ErrorEvent(
                request_id=self.request_id,
                attempt=self.attempt,
                seq=self._next(),
                error_type=error_type,
                message=message,
            )
        )
