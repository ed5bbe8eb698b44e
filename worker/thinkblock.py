"""The thinking block at the start of an answer, split out of the text as it streams.

Text between ``<think>`` and ``</think>`` at the start of the answer is thinking, the rest
content. Whitespace around the block goes, as in Ollama's parser; tags split across pieces
are held back until complete. A prompt that already ended with ``<think>`` (some templates
open the block themselves) starts the answer inside it: ``open`` says so before any text.
"""

from __future__ import annotations

from typing import Literal

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


_Phase = Literal["opening", "thinking", "after", "content"]


class ThinkingSplitter:
    """Splits text into (thinking, content) as it streams."""

    def __init__(self) -> None:
        self._phase: _Phase = "opening"
        self._buf = ""
        self._eat = False  # drop whitespace right after the opening tag

    def open(self) -> None:
        """The prompt ended with ``<think>``: the answer starts inside the block."""
        if self._phase == "opening" and not self._buf:
            self._phase, self._eat = "thinking", True

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
