"""The Engine protocol: what the consumer needs from whatever produces tokens.

``LlamaEngine`` (``worker.llama``, the only package that imports ``llama_cpp``) and
``FakeEngine`` (``worker.fake_engine``) implement it. ``generate`` may be called for up to
``slots(model)`` jobs of a model at once, and runs them together (the llama engine
decodes them in one batch). Closing the iterator early cancels the generation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from shared.messages import GenerateJob, LoadedModel, LoadOptions, Logprob, ModelAdvert
from worker.model_files import ModelSpec


@dataclass(frozen=True)
class Piece:
    """Generated text (may be several tokens' worth, or none), as the model wrote it.

    Thinking and tool calls are not split out here: ``worker.postprocess`` does that for
    every engine alike.
    """

    text: str
    logprobs: list[Logprob] | None = None
    #: On an answer's first piece: the prompt ended inside a thinking block (a template
    #: that writes ``<think>`` itself), so the answer's text up to ``</think>`` is thinking.
    thinking_opened: bool = False
    #: The answer's token ids generated since the previous piece (a continuation on
    #: another worker goes on from them).
    tokens: tuple[int, ...] = ()


@dataclass(frozen=True)
class Finish:
    done_reason: Literal["stop", "length"]
    n_prompt_tokens: int
    n_decoded: int
    prompt_eval_ns: int
    eval_ns: int
    context: list[int] | None = None
    #: Prompt tokens found in the KV cache (not evaluated again); in ``n_prompt_tokens``,
    #: which counts them all, as Ollama's ``prompt_eval_count`` does.
    n_cached: int = 0


EngineOutput = Piece | Finish


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    n_prompt_tokens: int


class Engine(Protocol):
    name: str
    #: Whether ``generate`` honours ``job.resume`` (goes on from those answer tokens).
    continues: bool

    def models(self) -> list[ModelAdvert]:
        """The models this engine can serve (loaded or not)."""
        ...

    def set_models(self, specs: list[ModelSpec]) -> None:
        """Serve ``specs`` from now on (the store changed): new ones become loadable, a
        changed one (other file or digest) is described again, a removed one is no longer
        listed (a loaded one stays usable until unloaded: the worker unloads it). May run
        in a thread while the event loop reads ``models()``."""
        ...

    def loaded(self) -> list[LoadedModel]:
        """The models resident now."""
        ...

    def memory_required(self, name: str, options: LoadOptions) -> int:
        """Bytes of device memory loading ``name`` with ``options`` takes (an estimate with
        a margin: weights, KV cache for num_ctx x slots, compute buffers). Placement and
        eviction plan with it."""
        ...

    def slots(self, name: str) -> int:
        """How many generations of ``name`` run at once (batched): as loaded, or as it
        would be loaded now. The worker claims no more jobs of it than that."""
        ...

    async def start(self) -> None:
        """Preload the models; the worker advertises itself as ready afterwards."""
        ...

    async def close(self) -> None: ...

    def effective_options(self, name: str, options: LoadOptions) -> LoadOptions:
        """``options`` with the engine's defaults filled in, so that asking for a default
        explicitly compares equal to not asking (and causes no reload)."""
        ...

    async def load(self, name: str, options: LoadOptions) -> None:
        """Load ``name`` (again, if loaded with other load-time options)."""
        ...

    async def unload(self, name: str) -> None: ...

    def generate(self, job: GenerateJob) -> AsyncIterator[EngineOutput]:
        """Pieces of text, then exactly one ``Finish``; raises ``HerdError`` on failure."""
        ...

    async def embed(self, job: GenerateJob) -> Embeddings:
        """One vector per ``job.inputs`` (raw; the caller cuts and normalises)."""
        ...
