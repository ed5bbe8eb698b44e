"""The Engine protocol: what the consumer needs from whatever produces tokens.

``LlamaEngine`` (``worker.llama_engine``, the only module that imports ``llama_cpp``) and
``FakeEngine`` (``worker.fake_engine``) implement it. ``generate`` may be called for many
jobs at once; an engine serialises or batches them as it can. Closing the iterator early
cancels the generation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from shared.messages import GenerateJob, ModelAdvert


@dataclass(frozen=True)
class Piece:
    """Generated text (may be several tokens' worth, or none)."""

    text: str


@dataclass(frozen=True)
class Finish:
    done_reason: Literal["stop", "length"]
    n_prompt_tokens: int
    n_decoded: int
    prompt_eval_ns: int
    eval_ns: int
    context: list[int] | None = None


EngineOutput = Piece | Finish


class Engine(Protocol):
    name: str

    def models(self) -> list[ModelAdvert]:
        """The models this engine has loaded (or will, once ``start`` returns)."""
        ...

    async def start(self) -> None:
        """Load the models; the worker advertises itself as ready afterwards."""
        ...

    async def close(self) -> None: ...

    def generate(self, job: GenerateJob) -> AsyncIterator[EngineOutput]:
        """Pieces of text, then exactly one ``Finish``; raises ``HerdError`` on failure."""
        ...
