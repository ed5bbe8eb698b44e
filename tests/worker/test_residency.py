"""Which models stay loaded: loads, keep_alive expiry, unload requests, eviction, reloads.

These drive ``Residency`` with a FakeEngine directly (the Redis side is in
``test_consumer_models``); times are scaled down to tenths of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from shared.messages import LoadOptions
from tests.polling import until
from worker.fake_engine import FakeEngine
from worker.residency import Residency

DEFAULT = LoadOptions()


def _setup(
    models: list[str], *, max_loaded: int = 3, keep_alive_s: float = 300.0, load_delay_s: float = 0
) -> tuple[FakeEngine, Residency]:
    engine = FakeEngine(models, 0, load_delay_s=load_delay_s, preload=False)
    return engine, Residency(engine, max_loaded=max_loaded, default_keep_alive_s=keep_alive_s)


@contextlib.asynccontextmanager
async def _holding(
    residency: Residency, name: str, options: LoadOptions = DEFAULT, keep_alive: float | None = None
) -> AsyncIterator[asyncio.Event]:
    """Keep ``name`` busy (a job running on it) until the yielded event is set."""
    release, entered = asyncio.Event(), asyncio.Event()

    async def job() -> None:
        async with residency.use(name, options, keep_alive):
            entered.set()
            await release.wait()

    task = asyncio.create_task(job())
    await asyncio.wait_for(entered.wait(), 5)
    try:
        yield release
    finally:
        release.set()
        await task


async def _use(
    residency: Residency, name: str, options: LoadOptions = DEFAULT, keep_alive: float | None = None
) -> None:
    async with residency.use(name, options, keep_alive):
        pass


def _expires(residency: Residency, name: str) -> datetime:
    model = next(m for m in residency.loaded() if m.name == name)
    return datetime.fromisoformat(model.expires_at)


async def test_concurrent_jobs_share_one_load() -> None:
    engine, residency = _setup(["a"], load_delay_s=0.1)
    await asyncio.gather(*(_use(residency, "a") for _ in range(5)))
    assert engine.history == [("load", "a")]
    assert residency.resident() == ["a"]


async def test_keep_alive_zero_unloads_as_soon_as_idle() -> None:
    engine, residency = _setup(["a"])
    async with _holding(residency, "a", keep_alive=0):
        await asyncio.sleep(0.05)
        assert residency.resident() == ["a"]  # never while a job runs
    await until(lambda: not residency.resident())
    assert engine.history == [("load", "a"), ("unload", "a")]
    assert engine.loaded() == []


async def test_keep_alive_expires_after_the_idle_period() -> None:
    _, residency = _setup(["a"])
    async with _holding(residency, "a", keep_alive=0.3):
        await asyncio.sleep(0.4)  # busy time does not count
        assert residency.resident() == ["a"]
    idle_at = datetime.now().astimezone()
    expires = _expires(residency, "a")
    assert timedelta(seconds=0.2) < expires - idle_at < timedelta(seconds=0.4)
    await asyncio.sleep(0.15)
    assert residency.resident() == ["a"]
    await until(lambda: not residency.resident(), timeout_s=1)


async def test_a_job_without_keep_alive_keeps_the_session_duration() -> None:
    _, residency = _setup(["a"], keep_alive_s=300)
    await _use(residency, "a", keep_alive=0.3)
    await _use(residency, "a")  # None: still 0.3 s, not the 300 s default
    await until(lambda: not residency.resident(), timeout_s=1)


async def test_a_new_job_cancels_a_pending_expiry() -> None:
    _, residency = _setup(["a"])
    await _use(residency, "a", keep_alive=0.2)
    await asyncio.sleep(0.1)
    await _use(residency, "a", keep_alive=60)
    await asyncio.sleep(0.3)
    assert residency.resident() == ["a"]


async def test_negative_keep_alive_is_forever() -> None:
    _, residency = _setup(["a"])
    await _use(residency, "a", keep_alive=-1)
    expires = _expires(residency, "a")
    assert expires.year >= datetime.now().year + 290  # Ollama shows about 292 years ahead
    assert expires.utcoffset() is not None  # RFC 3339 with the server's offset
    await asyncio.sleep(0.1)
    assert residency.resident() == ["a"]


async def test_expires_at_while_busy_is_now_plus_the_session() -> None:
    _, residency = _setup(["a"])
    async with _holding(residency, "a", keep_alive=600):
        (model,) = residency.loaded()
        assert model.busy == 1
        ahead = datetime.fromisoformat(model.expires_at) - datetime.now().astimezone()
        assert timedelta(seconds=595) < ahead <= timedelta(seconds=600)
    assert residency.loaded()[0].busy == 0


async def test_expire_unloads_an_idle_model_at_once() -> None:
    engine, residency = _setup(["a"])
    await _use(residency, "a", keep_alive=-1)
    residency.expire("a")
    await until(lambda: not residency.resident())
    assert engine.history[-1] == ("unload", "a")
    residency.expire("not-loaded")  # nothing to do, no error


async def test_expire_waits_for_a_busy_model() -> None:
    _, residency = _setup(["a"])
    async with _holding(residency, "a", keep_alive=-1):
        residency.expire("a")
        await asyncio.sleep(0.1)
        assert residency.resident() == ["a"]
    await until(lambda: not residency.resident())


async def test_eviction_picks_the_idle_model_expiring_first() -> None:
    engine, residency = _setup(["a", "b", "c", "d"], max_loaded=3)
    await _use(residency, "a", keep_alive=100)
    await _use(residency, "b", keep_alive=10)  # expires first
    await _use(residency, "c", keep_alive=-1)
    await _use(residency, "d")
    assert sorted(residency.resident()) == ["a", "c", "d"]
    assert ("unload", "b") in engine.history


async def test_a_busy_model_is_never_evicted() -> None:
    engine, residency = _setup(["a", "b", "c"], max_loaded=2)
    async with _holding(residency, "a", keep_alive=1):  # a would expire first, but is busy
        await _use(residency, "b", keep_alive=100)
        await _use(residency, "c")
        assert sorted(residency.resident()) == ["a", "c"]
    assert ("unload", "a") not in engine.history


async def test_when_all_are_busy_a_load_waits_for_one_to_go_idle() -> None:
    engine, residency = _setup(["a", "b"], max_loaded=1)
    async with _holding(residency, "a") as release:
        loading = asyncio.create_task(_use(residency, "b"))
        await asyncio.sleep(0.1)
        assert not loading.done() and residency.resident() == ["a"]
        # the model to make room for takes no new jobs meanwhile (no starvation)
        newcomer = asyncio.create_task(_use(residency, "a"))
        await asyncio.sleep(0.05)
        assert not newcomer.done()
        release.set()
        await asyncio.wait_for(loading, 3)
        await asyncio.wait_for(newcomer, 3)
    assert engine.history[:3] == [("load", "a"), ("unload", "a"), ("load", "b")]


async def test_other_load_options_reload_the_model() -> None:
    engine, residency = _setup(["a"])
    await _use(residency, "a")
    await _use(residency, "a", LoadOptions(num_ctx=8192))
    assert engine.history == [("load", "a"), ("load", "a")]  # engine.load reloads in place
    assert residency.loaded()[0].context_length == 8192
    await _use(residency, "a", LoadOptions(num_ctx=8192))  # same options: no reload
    assert len(engine.history) == 2


async def test_a_reload_waits_for_the_running_jobs() -> None:
    engine, residency = _setup(["a"])
    async with _holding(residency, "a") as release:
        reload = asyncio.create_task(_use(residency, "a", LoadOptions(num_ctx=512)))
        await asyncio.sleep(0.1)
        assert not reload.done() and engine.history == [("load", "a")]
        release.set()
        await asyncio.wait_for(reload, 3)
    assert engine.history == [("load", "a"), ("load", "a")]


async def test_asking_for_a_default_explicitly_is_no_reload_and_no_wait() -> None:
    engine, residency = _setup(["a"])
    async with _holding(residency, "a"):
        # 4096 is the fake engine's default context: the same model in effect
        await asyncio.wait_for(_use(residency, "a", LoadOptions(num_ctx=4096)), 1)
    assert engine.history == [("load", "a")]


async def test_no_job_attaches_to_a_model_while_it_reloads() -> None:
    engine, residency = _setup(["a"], load_delay_s=0.3)
    await _use(residency, "a")
    reload = asyncio.create_task(_use(residency, "a", LoadOptions(num_ctx=2048)))
    await until(lambda: len(engine.history) == 1 and reload.done() is False)
    await asyncio.sleep(0.05)  # the reload is inside engine.load now
    old = asyncio.create_task(_use(residency, "a"))
    await asyncio.sleep(0.1)
    assert not old.done()  # it waits for the reload instead of running on the swapped copy
    await asyncio.wait_for(asyncio.gather(reload, old), 3)
    assert engine.history == [("load", "a"), ("load", "a"), ("load", "a")]


async def test_a_failed_load_leaves_nothing_behind() -> None:
    _, residency = _setup(["a"])
    with pytest.raises(Exception, match="not found"):
        await _use(residency, "missing")
    assert residency.resident() == []
    await _use(residency, "a")  # the lock was released
    assert residency.resident() == ["a"]


async def test_preloaded_models_are_adopted_with_the_default_keep_alive() -> None:
    engine = FakeEngine(["a", "b"], 0)  # preloads its first model
    residency = Residency(engine, max_loaded=3, default_keep_alive_s=0.2)
    await engine.start()
    residency.adopt_preloaded()
    assert residency.resident() == ["a"]
    await until(lambda: not residency.resident(), timeout_s=1)
    assert engine.loaded() == []
    await residency.close()


async def test_changes_are_reported() -> None:
    changes: list[int] = []
    engine = FakeEngine(["a"], 0, preload=False)
    residency = Residency(
        engine, max_loaded=1, default_keep_alive_s=1, on_change=lambda: changes.append(1)
    )
    await _use(residency, "a", keep_alive=0)
    await until(lambda: len(changes) == 2)  # loaded, then unloaded


async def test_a_job_hears_that_no_advert_shows_its_model_yet() -> None:
    """A job on a model placement loaded a moment ago must write the advert before it
    answers (a client that then lists the models sees it); once an advert showed the
    model, jobs do not write it again."""
    _, residency = _setup(["a:1"])
    assert await residency.place("a:1")
    async with residency.use("a:1", DEFAULT) as unlisted:
        assert unlisted
    residency.mark_advertised(["a:1"])
    async with residency.use("a:1", DEFAULT) as unlisted:
        assert not unlisted
