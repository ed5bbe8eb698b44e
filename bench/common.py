"""What every side of the bench shares: the settings, the prompts, one stream's timings,
one round of concurrent streams, and the statistics."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import httpx

MODEL = "gemma3:270m"

#: A raw story opening: gemma3:270m continues it for hundreds of tokens without writing
#: its end token, so every side generates the tokens asked for.
STORY = (
    " The old lighthouse keeper climbed the spiral stairs one last time before the storm. "
    "Below him the sea was grey and restless, and the gulls had gone quiet. He lit the lamp, "
    "wiped the salt from the glass, and sat down to write in his logbook. That night he wrote:"
)


def prompt(trial: int, stream: int) -> str:
    """A different first token per trial and stream, so no side reuses a KV prefix."""
    return f"Log {trial * 100 + stream + 1}.{STORY}"


@dataclass(frozen=True)
class Config:
    """Settings all sides share (threads as the worker picks them: the CPU count)."""

    n_ctx: int
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    n_batch: int = 512


@dataclass
class Stream:
    """One request as its client saw it (``time.perf_counter`` seconds)."""

    sent: float
    #: Arrival of each chunk that carried text (the first one ends the TTFT).
    chunks: list[float] = field(default_factory=list)
    #: Tokens generated, as the server counted them.
    tokens: int = 0
    ended: float = 0.0
    #: The server's own timings of the request (Herd's done chunk: *_duration in ns).
    server: dict[str, int] = field(default_factory=dict)

    @property
    def ttft(self) -> float:
        return self.chunks[0] - self.sent if self.chunks else math.nan

    def gaps(self) -> list[float]:
        """Inter-token latencies as the client sees them: between text-bearing chunks."""
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]

    @property
    def decode_tps(self) -> float:
        """Tokens after the first over the time after the first (one stream's decode speed)."""
        if len(self.chunks) < 2 or self.tokens < 2:
            return math.nan
        return (self.tokens - 1) / (self.ended - self.chunks[0])


@dataclass
class Round:
    """N streams started together; aggregate tokens/s over the round's wall time."""

    side: str
    concurrency: int
    new_tokens: int
    streams: list[Stream]

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def seconds(self) -> float:
        return max(s.ended for s in self.streams) - min(s.sent for s in self.streams)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    data = sorted(v for v in values if not math.isnan(v))
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return data[low] + (data[high] - data[low]) * (pos - low)


def wait_http(url: str, timeout_s: float = 180, alive: object = None) -> None:
    """Poll ``url`` until it answers 200 (``alive``: a Popen that must not exit meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        poll = getattr(alive, "poll", None)
        if poll is not None and poll() is not None:
            raise RuntimeError(f"process for {url} exited with {poll()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)
