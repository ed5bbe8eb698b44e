"""Turning a model's token bytes into text a client may see.

Token pieces can split a UTF-8 character, and a stop string can arrive across several
tokens; this holds back exactly as much as needed and never emits a stop string.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; returns the text that is now safe to emit."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(data)
        for stop in self._stops:
            index = self._pending.find(stop)
            if index >= 0:
                self.stopped = True
                text, self._pending = self._pending[:index], ""
                return text
        hold = self._held_back()
        text = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(text) :]
        return text

    def finish(self) -> str:
        """The rest, once generation ended without a stop string."""
        if self.stopped:
            return ""
        text = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return text

    def _held_back(self) -> int:
        # the longest tail of the pending text that is a prefix of some stop string
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest
