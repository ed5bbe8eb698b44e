"""Publishing one job's chunk events, numbered, on its request's token channel."""

from __future__ import annotations

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


class Publisher:
    def __init__(self, client: Redis, request_id: str, attempt: int) -> None:
        self._client = client
        self._channel = keys.token_channel(request_id)
        self.request_id = request_id
        self.attempt = attempt
        self._seq = 0

    def _next(self) -> int:
        seq, self._seq = self._seq, self._seq + 1
        return seq

    async def _publish(self, event: StartedEvent | TokenEvent | DoneEvent | ErrorEvent) -> int:
        receivers: int = await self._client.publish(self._channel, encode_event(event))
        return receivers

    async def started(self, worker_id: str, load_ns: int = 0) -> int:
        """Returns how many API processes listen: 0 means nobody waits for this job."""
        return await self._publish(
            StartedEvent(
                request_id=self.request_id,
                attempt=self.attempt,
                seq=self._next(),
                worker_id=worker_id,
                load_ns=load_ns,
            )
        )

    async def token(
        self,
        text: str = "",
        *,
        thinking: str = "",
        tool_calls: list[ToolCall] | None = None,
        logprobs: list[Logprob] | None = None,
    ) -> int:
        return await self._publish(
            TokenEvent(
                request_id=self.request_id,
                attempt=self.attempt,
                seq=self._next(),
                text=text,
                thinking=thinking,
                tool_calls=tool_calls or None,
                logprobs=logprobs or None,
            )
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
