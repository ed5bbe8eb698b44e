"""From an engine's raw output to what the client sees, for every engine alike.

- Thinking: when it is on (the model has the ``thinking`` capability and the job did not
  say ``think: false``), text between ``<think>`` and ``</think>`` at the start of the
  answer is ``thinking``, not content. Whitespace around the block goes, as in Ollama's
  parser; tags split across pieces are held back until complete.
- Tool calls (when the job has tools): ``worker.toolcalls`` finds them in the content;
  each comes out as its own chunk with empty text.
- Logprobs ride on the first chunk emitted after their piece (text can be held back).
- Embeddings: cut to ``dimensions`` and L2-normalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from shared import thinking
from shared.messages import GenerateJob, Logprob, ModelAdvert, ToolCall
from worker.engine import Piece
from worker.toolcalls import ToolCallParser

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


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


_Phase = Literal["opening", "thinking", "after", "content"]


class ThinkingSplitter:
    """Splits text into (thinking, content) as it streams."""

    def __init__(self, *, opened: bool = False) -> None:
        #: ``opened``: the prompt already ended with ``<think>`` (some templates do that).
        self._phase: _Phase = "thinking" if opened else "opening"
        self._buf = ""
        self._eat = opened  # drop whitespace right after the opening tag

    def feed(self, text: str, *, final: bool = False) -> tuple[str, str]:
        self._buf += text
        thinking, content = "", ""
        while True:
            if self._phase == "opening":
                stripped = self._buf.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self._buf = stripped[len(THINK_OPEN) :]
                    self._phase, self._eat = "thinking", True
                    continue
                if not final and THINK_OPEN.startswith(stripped):
                    break  # whitespace, or the tag's first characters: wait
                self._phase = "content"  # no thinking block: all of it (untrimmed) is content
                continue
            if self._phase == "thinking":
                if self._eat:
                    self._buf = self._buf.lstrip()
                    self._eat = not self._buf
                index = self._buf.find(THINK_CLOSE)
                if index >= 0:
                    thinking += self._buf[:index].rstrip()
                    self._buf = self._buf[index + len(THINK_CLOSE) :]
                    self._phase = "after"
                    continue
                # hold back trailing whitespace (it goes if the tag follows) and a partial tag
                hold = 0 if final else _held(self._buf)
                thinking += self._buf[: len(self._buf) - hold]
                self._buf = self._buf[len(self._buf) - hold :]
                break
            if self._phase == "after":
                self._buf = self._buf.lstrip()
                if not self._buf:
                    break
                self._phase = "content"
                continue
            content, self._buf = content + self._buf, ""
            break
        return thinking, content


def _held(text: str) -> int:
    """How much of the thinking's tail to hold: a partial closing tag and whitespace before."""
    keep = len(text)
    for size in range(min(len(text), len(THINK_CLOSE) - 1), 0, -1):
        if THINK_CLOSE.startswith(text[-size:]):
            keep = len(text) - size
            break
    return len(text) - len(text[:keep].rstrip())


class Postprocessor:
    """Turns engine pieces into chunks; ``finish`` flushes what was held back."""

    def __init__(self, *, thinking: bool, tools: bool, opened: bool = False) -> None:
        self._thinking = ThinkingSplitter(opened=opened) if thinking else None
        self._tools = ToolCallParser() if tools else None
        self._logprobs: list[Logprob] = []

    @classmethod
    def for_job(cls, job: GenerateJob, advert: ModelAdvert | None) -> Postprocessor:
        return cls(thinking=thinks(job, advert), tools=bool(job.tools))

    def feed(self, piece: Piece) -> list[Chunk]:
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


def shape_embeddings(
    vectors: list[list[float]], *, dimensions: int | None, normalize: bool
) -> list[list[float]]:
    """Cut each vector to ``dimensions`` (when smaller) and scale it to unit length."""
    shaped = []
    for vector in vectors:
        if dimensions is not None and 0 < dimensions < len(vector):
            vector = vector[:dimensions]
        if normalize:
            norm = math.sqrt(math.fsum(x * x for x in vector))
            vector = [x / norm for x in vector] if norm > 0 else list(vector)
        shaped.append(vector)
    return shaped
