"""worker.llama.model: every CPU model decodes on the one CPU decode thread, whichever
model's thread asks (one OpenMP team in the process: see the module)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from shared.messages import GenerateJob, SamplingOptions
from tests.worker.test_llama_engine_tiny import write_tiny_llama
from worker.engine import Finish
from worker.llama.engine import LlamaEngine
from worker.model_files import ModelSpec


async def test_every_cpu_models_decode_runs_on_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path)
    decoding: list[str] = []
    real = llama_cpp.llama_decode

    def recorded(ctx: Any, batch: Any) -> int:
        decoding.append(threading.current_thread().name)
        return int(real(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", recorded)
    names = ["one:latest", "two:latest"]
    engine = LlamaEngine(
        [ModelSpec(name=name, path=path) for name in names],
        n_ctx=256,
        n_gpu_layers=0,
        num_parallel=1,
    )
    await engine.start()
    try:
        for name in names:
            job = GenerateJob(
                request_id=name,
                model=name,
                kind="generate",
                prompt="the a o",
                raw=True,
                options=SamplingOptions(temperature=0, num_predict=4),
                enqueued_at_ms=0,
                deadline_ms=1,
            )
            outputs = [output async for output in engine.generate(job)]
            assert isinstance(outputs[-1], Finish) and outputs[-1].n_decoded > 0
        assert {model.name for model in engine.loaded()} == set(names)  # two model threads
    finally:
        await engine.close()
    assert decoding  # the recorder saw the decodes
    assert len(set(decoding)) == 1 and decoding[0].startswith("llama-cpu-decode")
