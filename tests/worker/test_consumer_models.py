"""A worker's models over real Redis: load jobs, keep_alive, unload requests on the control
stream, eviction, reloads, embeddings, thinking and tool calls on the token events.

Jobs go straight onto the model streams (``run_job``), as the API would put them.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime

import orjson
import pytest
from redis.asyncio import Redis

from shared import keys
from shared.messages import (
    ControlMessage,
    DoneEvent,
    LoadedModel,
    LoadOptions,
    StartedEvent,
    TokenEvent,
)
from tests.conftest import WorkerFactory, make_job, read_advert, run_job
from tests.polling import until
from worker.consumer import Worker
from worker.fake_engine import REPLY, THOUGHTS, FakeEngine

MODELS = ["a:1", "b:1", "c:1"]


def _engine(worker: Worker) -> FakeEngine:
    assert isinstance(worker.engine, FakeEngine)
    return worker.engine


async def _loaded(redis: Redis, worker_id: str) -> dict[str, LoadedModel]:
    return {m.name: m for m in (await read_advert(redis, worker_id)).loaded}


async def _unload_request(redis: Redis, worker_id: str, model: str) -> None:
    message = ControlMessage(action="unload", model=model)
    await redis.xadd(keys.control_stream(worker_id), dict(message.to_fields()))  # type: ignore[arg-type]


async def test_a_load_job_loads_and_answers_done_load(worker: WorkerFactory, redis: Redis) -> None:
    w = await worker(worker_id="w", fake_models=MODELS)
    assert set(await _loaded(redis, "w")) == {"a:1"}  # the first model is preloaded
    events = await run_job(redis, make_job("b:1", kind="load", messages=[]))
    assert [e.type for e in events] == ["started", "done"]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.done_reason == "load"
    assert (done.n_prompt_tokens, done.n_decoded, done.eval_ns) == (0, 0, 0)
    # the advert was refreshed before the answer: /api/ps shows it at once
    loaded = await _loaded(redis, "w")
    assert set(loaded) == {"a:1", "b:1"}
    assert loaded["b:1"].size_bytes == 1024 * 1024 and loaded["b:1"].context_length == 4096
    assert _engine(w).history == [("load", "a:1"), ("load", "b:1")]


async def test_a_job_loads_its_model_first(worker: WorkerFactory, redis: Redis) -> None:
    w = await worker(worker_id="w", fake_models=MODELS)
    events = await run_job(redis, make_job("c:1"))
    started, done = events[0], events[-1]
    assert isinstance(started, StartedEvent) and started.worker_id == "w"
    assert isinstance(done, DoneEvent) and done.done_reason == "stop"
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == REPLY
    assert ("load", "c:1") in _engine(w).history


async def test_keep_alive_zero_unloads_after_the_job(worker: WorkerFactory, redis: Redis) -> None:
    w = await worker(worker_id="w", fake_models=MODELS)
    await run_job(redis, make_job("b:1", keep_alive_s=0))
    await until(lambda: "b:1" not in {m.name for m in _engine(w).loaded()})
    await until(lambda: _missing(redis, "w", "b:1"))


async def _missing(redis: Redis, worker_id: str, model: str) -> bool:
    return model not in await _loaded(redis, worker_id)


async def test_keep_alive_expires_after_it_elapses(worker: WorkerFactory, redis: Redis) -> None:
    await worker(worker_id="w", fake_models=MODELS)
    await run_job(redis, make_job("b:1", keep_alive_s=1))
    idle = time.monotonic()
    expires = datetime.fromisoformat((await _loaded(redis, "w"))["b:1"].expires_at)
    assert 0.5 < (expires - datetime.now().astimezone()).total_seconds() <= 1.0
    await asyncio.sleep(0.5)
    assert "b:1" in await _loaded(redis, "w")
    await until(lambda: _missing(redis, "w", "b:1"), timeout_s=3)
    assert time.monotonic() - idle >= 1.0


async def test_negative_keep_alive_keeps_it_forever(worker: WorkerFactory, redis: Redis) -> None:
    await worker(worker_id="w", fake_models=MODELS)
    await run_job(redis, make_job("b:1", kind="load", messages=[], keep_alive_s=-1))
    expires = datetime.fromisoformat((await _loaded(redis, "w"))["b:1"].expires_at)
    assert expires.year > datetime.now().year + 290


async def test_an_unload_request_unloads_an_idle_model(worker: WorkerFactory, redis: Redis) -> None:
    w = await worker(worker_id="w", fake_models=MODELS)
    await _unload_request(redis, "w", "a:1")
    await until(lambda: _missing(redis, "w", "a:1"))
    assert _engine(w).history[-1] == ("unload", "a:1")
    await until(lambda: _stream_empty(redis, "w"))  # handled messages are removed


async def _stream_empty(redis: Redis, worker_id: str) -> bool:
    return int(await redis.xlen(keys.control_stream(worker_id))) == 0


async def test_an_unload_request_waits_for_the_running_job(
    worker: WorkerFactory, redis: Redis
) -> None:
    w = await worker(worker_id="w", fake_models=MODELS, num_parallel=1, fake_token_delay_s=0.05)
    running = asyncio.create_task(run_job(redis, make_job("a:1")))
    await until(lambda: w.active_jobs == 1)
    await _unload_request(redis, "w", "b:1")  # not loaded: ignored
    await _unload_request(redis, "w", "a:1")
    await until(lambda: _stream_empty(redis, "w"))  # read although no job slot is free
    assert "a:1" in await _loaded(redis, "w")
    assert ("unload", "a:1") not in _engine(w).history
    events = await running
    assert isinstance(events[-1], DoneEvent) and events[-1].done_reason == "stop"
    await until(lambda: _missing(redis, "w", "a:1"))


async def test_an_advert_counts_busy_jobs(worker: WorkerFactory, redis: Redis) -> None:
    w = await worker(worker_id="w", fake_models=MODELS, num_parallel=2, fake_token_delay_s=0.05)
    jobs = [asyncio.create_task(run_job(redis, make_job("a:1"))) for _ in range(2)]
    await until(lambda: w.active_jobs == 2)
    await until(lambda: _busy(redis, "w", "a:1", 2))
    await asyncio.gather(*jobs)
    await until(lambda: _busy(redis, "w", "a:1", 0))


async def _busy(redis: Redis, worker_id: str, model: str, count: int) -> bool:
    loaded = await _loaded(redis, worker_id)
    return model in loaded and loaded[model].busy == count


async def test_the_model_cap_evicts_the_idle_one_expiring_first(
    worker: WorkerFactory, redis: Redis
) -> None:
    w = await worker(worker_id="w", fake_models=MODELS, max_loaded_models=2)
    await run_job(redis, make_job("a:1", kind="load", messages=[], keep_alive_s=600))
    await run_job(redis, make_job("b:1", kind="load", messages=[], keep_alive_s=60))
    await run_job(redis, make_job("c:1", kind="load", messages=[]))
    assert set(await _loaded(redis, "w")) == {"a:1", "c:1"}
    assert ("unload", "b:1") in _engine(w).history


async def test_the_model_cap_never_evicts_a_busy_model(worker: WorkerFactory, redis: Redis) -> None:
    w = await worker(
        worker_id="w",
        fake_models=MODELS,
        max_loaded_models=2,
        num_parallel=2,
        fake_token_delay_s=0.05,
    )
    await run_job(redis, make_job("b:1", kind="load", messages=[], keep_alive_s=600))
    # a:1 expires first (5 min default vs 10 min) but is busy: b:1 goes instead
    running = asyncio.create_task(run_job(redis, make_job("a:1")))
    await until(lambda: _busy(redis, "w", "a:1", 1))
    await run_job(redis, make_job("c:1", kind="load", messages=[]))
    assert set(await _loaded(redis, "w")) == {"a:1", "c:1"}
    assert ("unload", "a:1") not in _engine(w).history
    await running


async def test_other_load_options_reload(worker: WorkerFactory, redis: Redis) -> None:
    w = await worker(worker_id="w", fake_models=MODELS)
    events = await run_job(redis, make_job("a:1", load=LoadOptions(num_ctx=8192)))
    assert isinstance(events[-1], DoneEvent)
    assert _engine(w).history == [("load", "a:1"), ("load", "a:1")]  # reloaded in place
    await until(lambda: _context(redis, "w", "a:1", 8192))


async def _context(redis: Redis, worker_id: str, model: str, n_ctx: int) -> bool:
    loaded = await _loaded(redis, worker_id)
    return model in loaded and loaded[model].context_length == n_ctx


async def test_embed_gives_normalised_vectors_cut_to_dimensions(
    worker: WorkerFactory, redis: Redis
) -> None:
    await worker(worker_id="w", fake_models=MODELS)
    texts = ["why is the sky blue", "because"]
    events = await run_job(redis, make_job("b:1", kind="embed", messages=[], inputs=texts))
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.embeddings is not None
    assert [len(v) for v in done.embeddings] == [8, 8]
    assert all(abs(sum(x * x for x in v) - 1) < 1e-9 for v in done.embeddings)
    assert done.n_prompt_tokens == 6
    cut = await run_job(
        redis, make_job("b:1", kind="embed", messages=[], inputs=texts, dimensions=3)
    )
    vectors = cut[-1].embeddings  # type: ignore[union-attr]
    assert vectors is not None and [len(v) for v in vectors] == [3, 3]
    assert all(abs(sum(x * x for x in v) - 1) < 1e-9 for v in vectors)
    raw = await run_job(
        redis, make_job("b:1", kind="embed", messages=[], inputs=texts, normalize=False)
    )
    plain = raw[-1].embeddings  # type: ignore[union-attr]
    assert plain is not None and abs(sum(x * x for x in plain[0]) - 1) > 1e-3
    # cut first, then normalised: the direction of the raw vector's first three numbers
    norm = math.sqrt(sum(x * x for x in plain[0][:3]))
    assert [x / norm for x in plain[0][:3]] == pytest.approx(vectors[0])


async def test_embed_without_input_only_loads(worker: WorkerFactory, redis: Redis) -> None:
    await worker(worker_id="w", fake_models=MODELS)
    events = await run_job(redis, make_job("c:1", kind="embed", messages=[]))
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.embeddings == []
    assert "c:1" in await _loaded(redis, "w")


async def test_thinking_and_tool_calls_arrive_split_out(
    worker: WorkerFactory, redis: Redis
) -> None:
    await worker(worker_id="w", fake_models=MODELS)
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "required": ["city"],
                "properties": {"city": {"type": "string"}},
            },
        },
    }
    events = await run_job(redis, make_job("a:1", think=True, tools=[tool]))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert "".join(t.thinking for t in tokens) == THOUGHTS
    assert "".join(t.text for t in tokens) == ""
    calls = [(t, c) for t in tokens for c in t.tool_calls or []]
    assert len(calls) == 1
    token, call = calls[0]
    assert token.text == "" and token is tokens[-1]  # its own event, before the final one
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert call.id.startswith("call_") and len(call.id) == 13
    assert isinstance(events[-1], DoneEvent)
    assert [e.seq for e in events] == list(range(len(events)))


async def test_logprobs_ride_on_token_events(worker: WorkerFactory, redis: Redis) -> None:
    await worker(worker_id="w", fake_models=MODELS)
    events = await run_job(redis, make_job("a:1", logprobs=True, top_logprobs=2))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert tokens and all(t.logprobs for t in tokens)
    assert all(len(t.logprobs[0].top_logprobs or []) == 2 for t in tokens if t.logprobs)


async def test_full_model_info_is_written_once_per_model(
    worker: WorkerFactory, redis: Redis
) -> None:
    w = await worker(worker_id="w", fake_models=MODELS)
    for model in w.engine.models():
        raw = await redis.get(keys.model_info(model.digest))
        assert raw is not None
        info = orjson.loads(raw)
        assert info["general.architecture"] == "fake"
        assert len(info["tokenizer.ggml.tokens"]) > 5  # unlike the advert's shortened copy
    assert len({m.digest for m in w.engine.models()}) == len(MODELS)


async def test_stopping_removes_the_control_stream(worker: WorkerFactory, redis: Redis) -> None:
    w = await worker(worker_id="w", fake_models=MODELS)
    await redis.xadd(keys.control_stream("w"), {"junk": b"1"})  # not a message: skipped
    await _unload_request(redis, "w", "a:1")
    await until(lambda: _missing(redis, "w", "a:1"))
    w.stop()
    await until(lambda: not w.ready)
    await until(lambda: _gone(redis, keys.control_stream("w")))


async def _gone(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)
