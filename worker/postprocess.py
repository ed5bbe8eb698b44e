"""From an engine's raw pieces to the chunks the client sees, for every engine alike.

- Thinking, when it is on (``shared.thinking.enabled``): ``worker.thinkblock`` splits the
  block at the start of the answer out as ``thinking``; when the engine's first piece says
  the prompt opened the block (``Piece.thinking_opened``), the answer starts inside it.
- Tool calls (when the job has tools): ``worker.toolcalls`` finds them in the content;
  each comes out as its own chunk with empty text.
- Logprobs ride on the first chunk emitted after their piece (text can be held back).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared import thinking
from shared.messages import GenerateJob, Logprob, ModelAdvert, ToolCall
from worker.engine import Piece
from worker.thinkblock import ThinkingSplitter
from worker.toolcalls import ToolCallParser


@dataclass
class Chunk:
    """The fields of one ``TokenEvent``."""

    text: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[Logprob] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.text or self.thinking or self.tool_calls or self.logprobs)


def thinks(job: GenerateJob, advert: ModelAdvert | None) -> bool:
    """Whether the answer's thinking is split out (``shared.thinking.enabled``)."""
    capable = advert is not None and "thinking" in advert.capabilities
    return thinking.enabled(job.think, capable=capable)


class Postprocessor:
    """Turns engine pieces into chunks; ``finish`` flushes what was held back."""

    def __init__(self, *, thinking: bool, tools: bool) -> None:
        self._thinking = ThinkingSplitter() if thinking else None
        self._tools = ToolCallParser() if tools else None
        self._logprobs: list[Logprob] = []

    @classmethod
    def for_job(cls, job: GenerateJob, advert: ModelAdvert | None) -> Postprocessor:
        return cls(thinking=thinks(job, advert), tools=bool(job.tools))

    def feed(self, piece: Piece) -> list[Chunk]:
        if piece.thinking_opened and self._thinking is not None:
            self._thinking.open()  # the prompt opened the block: its text is thinking
        self._logprobs += piece.logprobs or []
        return self._chunks(piece.text, final=False)

    def finish(self) -> list[Chunk]:
        chunks = self._chunks("", final=True)
        if self._logprobs:  # logprobs of text that turned out to be nothing
            chunks.append(Chunk(logprobs=self._take_logprobs()))
        return chunks

    def _chunks(self, text: str, *, final: bool) -> list[Chunk]:
        thinking, content = "", text
        if self._thinking is not None:
            thinking, content = self._thinking.feed(text, final=final)
        calls: list[ToolCall] = []
        if self._tools is not None:
            content, calls = self._tools.feed(content)
            if final:
                rest, more = self._tools.finish()
                content, calls = content + rest, calls + more
        chunks = []
        if thinking or content:
            chunks.append(Chunk(text=content, thinking=thinking))
        if calls:
            chunks.append(Chunk(tool_calls=calls))
        if chunks:
            chunks[0].logprobs = self._take_logprobs()
        return chunks

    def _take_logprobs(self) -> list[Logprob]:
        taken, self._logprobs = self._logprobs, []
        return taken
