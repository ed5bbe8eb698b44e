"""A stand-in for the model, for tests about the cluster rather than the tokens.

It reads no model file. Its answer is deterministic: the words of ``REPLY`` (a multi-byte
character among them) at ``token_delay_s`` per token, ``num_predict`` of them if given
("length"), else the whole reply ("stop"). A prompt containing ``FAIL_MARKER`` fails after
two tokens, to test errors in the middle of a stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Literal

from shared.errors import EngineFailure
from shared.messages import GenerateJob, ModelAdvert
from worker.engine import EngineOutput, Finish, Piece

REPLY = "Hello from the herd. Ünïcode survives the trip, token by token."
FAIL_MARKER = "[[fake:fail]]"


class FakeEngine:
    name = "fake"

    def __init__(self, models: list[str], token_delay_s: float = 0.01) -> None:
        self._models = [
            ModelAdvert(
                name=m,
                family="fake",
                parameter_size="0",
                quantization_level="none",
                size_bytes=1,
                digest="0" * 64,
                context_length=4096,
                modified_at="2026-01-01T00:00:00Z",
            )
            for m in models
        ]
        self._delay = token_delay_s
        #: Jobs generated so far, newest last (tests check exactly-once runs with it).
        self.seen: list[str] = []

    def models(self) -> list[ModelAdvert]:
        return list(self._models)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def generate(self, job: GenerateJob) -> AsyncIterator[EngineOutput]:
        self.seen.append(job.request_id)
        prompt = job.prompt + "".join(m.content for m in job.messages)
        words = [w + " " for w in REPLY.split(" ")]
        words[-1] = words[-1].rstrip()
        limit = job.options.num_predict
        reason: Literal["stop", "length"] = "stop"
        if limit is not None and 0 <= limit < len(words):
            words, reason = words[:limit], "length"
        started = time.perf_counter_ns()
        for index, word in enumerate(words):
            if FAIL_MARKER in prompt and index == 2:
                raise EngineFailure("fake engine failure")
            await asyncio.sleep(self._delay)
            yield Piece(word)
        yield Finish(
            done_reason=reason,
            n_prompt_tokens=max(1, len(prompt.split())),
            n_decoded=len(words),
            prompt_eval_ns=1_000_000,
            eval_ns=max(1, time.perf_counter_ns() - started),
            context=list(range(len(words))),
        )
