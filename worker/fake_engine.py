"""A stand-in for the model, for tests about the cluster rather than the tokens.

It reads no model file and implements the whole ``Engine`` protocol deterministically:

- The answer is the words of ``REPLY`` (a multi-byte character among them) at
  ``token_delay_s`` per piece (after ``prefill_delay_s``, as a long prompt being read),
  ``num_predict`` pieces of it if given ("length"), else all ("stop"). A prompt
  containing ``FAIL_MARKER`` fails after two pieces, to test errors in the middle of a
  stream; one containing ``CRASH_MARKER`` kills the worker's process
  (SIGKILL) before its first piece, to test poison jobs. One containing ``COUNT_MARKER``
  answers ``"0 1 2 ..."``, ``num_predict`` numbers (``COUNT_DEFAULT`` without it): a long
  answer whose every piece is known, to check that none is lost or repeated.
- With ``think`` truthy and the ``thinking`` capability, ``<think>Fake thoughts.</think>``
  comes first; with ``tools`` (and the last message not a tool result) the answer is a
  ``<tool_call>`` for the first tool with arguments made from its schema; ``format`` gives
  a JSON document (``{"reply": REPLY}`` for ``"json"``, a valid instance for a schema).
  The raw markup is split over pieces, as a model would write it: ``worker.postprocess``
  turns it into thinking and tool calls.
- ``logprobs`` are made up but stable; ``embed`` hashes each input into 8 numbers (not
  normalised, so the worker's normalisation is tested).
- ``load``/``unload`` only keep books; generating on a model not loaded fails, as in the
  real engine. ``start`` preloads the first model, like the worker's default model.
- A word is a token: a prompt or an input with more words than the context (``num_ctx``,
  4096 by default) is refused when ``shift``/``truncate`` is false, with Ollama's texts.
- Memory: a model is ``name`` or ``name=4GiB`` (``HERD_FAKE_MODELS``); that size is its
  file, what loading it takes (``memory_required``, whatever the options) and what it
  occupies. ``FakeDevice`` is the one device of ``HERD_FAKE_MEMORY`` the worker advertises,
  so placement is testable without GPUs.
- A piece is a token: its id is its index in the answer; a continuation (``job.resume``)
  goes on after the pieces it names, as the llama engine goes on after its tokens.
- Slots as in the llama engine: ``slots`` generations of a model run at once (``None``:
  ``AUTO_SLOTS``, as ``auto`` picks on a CPU); more wait for a free one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import orjson
from pydantic import ByteSize, TypeAdapter

from shared import thinking
from shared.errors import EngineFailure, InvalidRequest
from shared.messages import GenerateJob, LoadedModel, LoadOptions, Logprob, ModelAdvert, TopLogprob
from worker.devices import FakeDevice
from worker.engine import Embeddings, EngineOutput, Finish, Piece
from worker.model_files import ModelSpec
from worker.schema_example import example

REPLY = "Hello from the herd. Ünïcode survives the trip, token by token."
FAIL_MARKER = "[[fake:fail]]"
CRASH_MARKER = "[[fake:crash]]"
COUNT_MARKER = "[[fake:count]]"
COUNT_DEFAULT = 200
THOUGHTS = "Fake thoughts."
#: What every loaded fake model "occupies".
SIZE_BYTES = 1024 * 1024
EMBEDDING_LENGTH = 8
#: Slots per model when none are set (the llama engine's ``auto`` on a CPU).
AUTO_SLOTS = 4
DEFAULT_CONTEXT = 4096
DEFAULT_CAPABILITIES = ("completion", "tools", "thinking", "insert", "embedding")
PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; "
    "shorten the prompt, adjust the context length in settings, or use a model with a "
    "longer context length"
)
INPUT_TOO_LONG = "the input length exceeds the context length"


class FakeEngine:
    name = "fake"
    continues = True

    def __init__(
        self,
        models: list[str],
        token_delay_s: float = 0.01,
        *,
        capabilities: Sequence[str] = DEFAULT_CAPABILITIES,
        load_delay_s: float = 0.0,
        prefill_delay_s: float = 0.0,
        preload: bool = True,
        slots: int | None = None,
        specs: Sequence[ModelSpec] = (),
    ) -> None:
        """``specs``: store models served besides ``models`` (their adverts say what the
        store says; their files are never read)."""
        self._capabilities = list(capabilities)
        self._named = dict(_sized(entry) for entry in models)
        self._sizes = dict(self._named)
        self._models = [_advert(m, size, self._capabilities) for m, size in self._sizes.items()]
        self._delay = token_delay_s
        self._load_delay = load_delay_s
        self._prefill_delay = prefill_delay_s
        self._preload = preload
        self._loaded: dict[str, LoadOptions] = {}
        self._slots = slots or AUTO_SLOTS
        self._free: dict[str, asyncio.Semaphore] = {}
        #: Generations running now, per model, and the most seen at once.
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        #: Jobs generated so far, newest last (tests check exactly-once runs with it).
        self.seen: list[str] = []
        #: Every load and unload, in order: ("load", name) / ("unload", name).
        self.history: list[tuple[str, str]] = []
        self.set_models(list(specs))

    def models(self) -> list[ModelAdvert]:
        return list(self._models)

    def set_models(self, specs: list[ModelSpec]) -> None:
        """Serve ``specs`` besides the named models (a spec of the same name wins)."""
        by_name = {spec.name: spec for spec in specs}
        sizes = {n: b for n, b in self._named.items() if n not in by_name}
        models = [_advert(n, b, self._capabilities) for n, b in sizes.items()]
        for spec in by_name.values():
            advert = _advert(spec.name, SIZE_BYTES, self._capabilities)
            update = {"digest": spec.digest, "parameters": spec.parameters}
            models.append(advert.model_copy(update={**update, **spec.advert_fields()}))
            sizes[spec.name] = SIZE_BYTES
        # loaded models keep their size until unloaded; both swaps are single assignments
        self._sizes = {
            **{n: self._sizes[n] for n in tuple(self._loaded) if n in self._sizes},
            **sizes,
        }
        self._models = models

    def loaded(self) -> list[LoadedModel]:
        return [
            LoadedModel(
                name=name,
                size_bytes=self._sizes[name],
                context_length=options.num_ctx or DEFAULT_CONTEXT,
                expires_at="",  # the worker's residency knows when; the engine does not
                busy=self.running.get(name, 0),
                slots=self._slots,
            )
            for name, options in self._loaded.items()
        ]

    def slots(self, name: str) -> int:
        return self._slots

    def memory_required(self, name: str, options: LoadOptions) -> int:
        return self._sizes.get(name, SIZE_BYTES)

    def memory_used(self) -> int:
        """What the loaded models occupy (the fake device's used memory)."""
        return sum(self._sizes[name] for name in self._loaded)

    def full_model_info(self, name: str) -> dict[str, Any]:
        return _model_info(name)

    async def start(self) -> None:
        if self._preload and self._models:
            await self.load(self._models[0].name, LoadOptions())

    async def close(self) -> None:
        self._loaded.clear()

    def effective_options(self, name: str, options: LoadOptions) -> LoadOptions:
        return options.model_copy(update={"num_ctx": options.num_ctx or DEFAULT_CONTEXT})

    async def load(self, name: str, options: LoadOptions) -> None:
        if name not in {m.name for m in self._models}:
            raise EngineFailure(f"model '{name}' not found")
        if self._loaded.get(name) == options:
            return  # loaded like this already
        if self._load_delay:
            await asyncio.sleep(self._load_delay)
        self._loaded[name] = options
        self.history.append(("load", name))

    async def unload(self, name: str) -> None:
        if self._loaded.pop(name, None) is not None:
            self.history.append(("unload", name))

    def _require(self, name: str) -> int:
        """The context length ``name`` is loaded with; fails if it is not loaded."""
        if name not in self._loaded:
            raise EngineFailure(f"model '{name}' is not loaded on this worker")
        return self._loaded[name].num_ctx or DEFAULT_CONTEXT

    async def generate(self, job: GenerateJob) -> AsyncIterator[EngineOutput]:
        n_ctx = self._require(job.model)
        self.seen.append(job.request_id)
        prompt = job.prompt + "".join(m.content for m in job.messages)
        if len(prompt.split()) > n_ctx and (job.shift is False or job.truncate is False):
            raise InvalidRequest(PROMPT_TOO_LONG)
        free = self._free.setdefault(job.model, asyncio.Semaphore(self._slots))
        async with free:
            self.running[job.model] = self.running.get(job.model, 0) + 1
            self.peak[job.model] = max(self.peak.get(job.model, 0), self.running[job.model])
            try:
                async for output in self._generate(job, prompt):
                    yield output
            finally:
                self.running[job.model] -= 1

    async def _generate(self, job: GenerateJob, prompt: str) -> AsyncIterator[EngineOutput]:
        pieces = self._pieces(job)
        limit = job.options.num_predict
        reason: Literal["stop", "length"] = "stop"
        if limit is not None and 0 < limit < len(pieces):  # 0, like -1, means no limit
            pieces, reason = pieces[:limit], "length"
        started = time.perf_counter_ns()
        if CRASH_MARKER in prompt:
            os.kill(os.getpid(), signal.SIGKILL)  # as a segfault in llama.cpp would
        skip = len(job.resume or [])  # a continuation: those pieces were sent already
        if self._prefill_delay:
            await asyncio.sleep(self._prefill_delay)  # as a long prompt being read
        for index, text in enumerate(pieces):
            if index < skip:
                continue
            if FAIL_MARKER in prompt and index == 2:
                raise EngineFailure("fake engine failure")
            await asyncio.sleep(self._delay)
            logprobs = _logprobs(text, index, job.top_logprobs) if job.logprobs else None
            yield Piece(text, logprobs, tokens=(index,))
        yield Finish(
            done_reason=reason,
            n_prompt_tokens=max(1, len(prompt.split())),
            n_decoded=len(pieces),
            prompt_eval_ns=1_000_000,
            eval_ns=max(1, time.perf_counter_ns() - started),
            context=list(range(len(pieces))),
        )

    def _pieces(self, job: GenerateJob) -> list[str]:
        advert = next((m for m in self._models if m.name == job.model), None)
        capable = "thinking" in (advert.capabilities if advert else self._capabilities)
        pieces: list[str] = []
        if thinking.requested(job.think) and capable:
            pieces += ["<thi", "nk>Fake ", "thoughts.</th", "ink>"]
        last = job.messages[-1].role if job.messages else ""
        if job.tools and last != "tool":
            function = job.tools[0].get("function", {})
            call = orjson.dumps(
                {"name": function.get("name", ""), "arguments": example(function.get("parameters"))}
            ).decode()
            middle = len(call) // 2
            pieces += ["<tool", "_call>", call[:middle], call[middle:], "</tool_call>"]
        elif job.format == "json":
            pieces += _split(orjson.dumps({"reply": REPLY}).decode())
        elif isinstance(job.format, dict):
            pieces += _split(orjson.dumps(example(job.format)).decode())
        elif COUNT_MARKER in job.prompt + "".join(m.content for m in job.messages):
            limit = job.options.num_predict
            pieces += [f"{i} " for i in range(limit if limit and limit > 0 else COUNT_DEFAULT)]
        else:
            words = [w + " " for w in REPLY.split(" ")]
            words[-1] = words[-1].rstrip()
            pieces += words
        return pieces

    async def embed(self, job: GenerateJob) -> Embeddings:
        n_ctx = self._require(job.model)
        if job.truncate is False and any(len(text.split()) > n_ctx for text in job.inputs):
            raise InvalidRequest(INPUT_TOO_LONG)
        await asyncio.sleep(self._delay)
        return Embeddings(
            vectors=[_vector(text) for text in job.inputs],
            n_prompt_tokens=sum(len(text.split()) for text in job.inputs),
        )


_BYTES: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


def _sized(entry: str) -> tuple[str, int]:
    """``name`` or ``name=4GiB`` -> (name, bytes)."""
    name, _, size = entry.partition("=")
    return name.strip(), int(_BYTES.validate_python(size)) if size else SIZE_BYTES


def _advert(name: str, size: int, capabilities: list[str]) -> ModelAdvert:
    info = _model_info(name)
    return ModelAdvert(
        name=name,
        family="fake",
        parameter_size="0",
        quantization_level="none",
        size_bytes=size,
        memory_bytes=size,
        digest=hashlib.sha256(name.encode()).hexdigest(),
        context_length=DEFAULT_CONTEXT,
        embedding_length=EMBEDDING_LENGTH,
        modified_at="2026-01-01T00:00:00Z",
        capabilities=capabilities,
        template="{{ .Prompt }}",
        # as in a real advert: arrays longer than 5 items are left empty
        model_info={k: ([] if isinstance(v, list) and len(v) > 5 else v) for k, v in info.items()},
    )


def _model_info(name: str) -> dict[str, Any]:
    return {
        "general.architecture": "fake",
        "general.basename": name.split(":")[0],
        "fake.context_length": DEFAULT_CONTEXT,
        "fake.embedding_length": EMBEDDING_LENGTH,
        "tokenizer.ggml.tokens": [w for w in REPLY.split(" ")],
    }


def _split(document: str, size: int = 7) -> list[str]:
    return [document[i : i + size] for i in range(0, len(document), size)]


def _logprobs(text: str, index: int, top: int) -> list[Logprob]:
    value = -0.1 * (index % 7 + 1)
    alternatives = [
        TopLogprob(token=text, logprob=value, bytes=list(text.encode())),
        *(
            TopLogprob(token=f"alt{n}", logprob=value - n, bytes=list(f"alt{n}".encode()))
            for n in range(1, max(0, top))
        ),
    ]
    return [
        Logprob(
            token=text,
            logprob=value,
            bytes=list(text.encode()),
            top_logprobs=alternatives[:top] if top > 0 else None,
        )
    ]


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    # in [-1, 1), never all zero: a plain function of the text
    return [(byte - 128) / 128 + 0.01 for byte in digest[:EMBEDDING_LENGTH]]


def fake_device(total: int | None, engine: object) -> FakeDevice | None:
    """The one device of ``HERD_FAKE_MEMORY`` (``total``) when ``engine`` is a FakeEngine."""
    if total is None or not isinstance(engine, FakeEngine):
        return None
    return FakeDevice(total, engine.memory_used)
