"""Fixtures for the API's own tests: an ``AppState`` over the real Redis, and adverts
written the way workers write them (for tests about validation, not about the workers)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import httpx
import openai
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from api.aliases import Aliases
from api.dispatch import Dispatcher
from api.registry import Registry
from api.state import AppState
from api.tokens import TokenRouter
from shared import keys
from shared.messages import LoadedModel, ModelAdvert, WorkerAdvert
from tests.conftest import SettingsFactory

ALL_CAPABILITIES = ["completion", "tools", "thinking", "insert", "vision", "embedding"]


def advert(
    name: str, capabilities: Sequence[str] = ALL_CAPABILITIES, **fields: object
) -> ModelAdvert:
    values: dict[str, object] = {
        "name": name,
        "family": "llama",
        "parameter_size": "1B",
        "quantization_level": "Q4_K_M",
        "size_bytes": 1000,
        "digest": "d" * 64,
        "context_length": 2048,
        "modified_at": "2026-01-01T00:00:00Z",
        "capabilities": list(capabilities),
    }
    values.update(fields)
    return ModelAdvert.model_validate(values)


async def advertise(
    redis: Redis,
    models: Sequence[ModelAdvert],
    *,
    worker_id: str = "w1",
    loaded: Sequence[LoadedModel] = (),
    ttl_s: float = 30.0,
) -> WorkerAdvert:
    """Publish a worker advert exactly as a heartbeat does."""
    worker = WorkerAdvert(
        worker_id=worker_id,
        host="test",
        version="0",
        engine="fake",
        devices=[],
        models=list(models),
        loaded=list(loaded),
        slots_total=1,
        slots_free=1,
        ready=True,
        started_at="2026-01-01T00:00:00Z",
    )
    await redis.set(keys.worker_key(worker_id), worker.model_dump_json(), px=int(ttl_s * 1000))
    await redis.zadd(keys.WORKERS_INDEX, {worker_id: time.time() + ttl_s})
    return worker


@pytest.fixture(autouse=True)
def forget_seen_models(redis_url: str) -> None:
    """The catalog of models seen outlives a test's workers (that is its job): each test
    starts with one that knows only what its own workers advertise."""
    with SyncRedis.from_url(redis_url) as client:
        client.delete(keys.CATALOG_SEEN)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """The session's Redis, flushed before and after (adverts written here outlive a test)."""
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def state(
    redis: Redis, redis_url: str, make_settings: SettingsFactory
) -> AsyncIterator[AppState]:
    subscriber = Redis.from_url(redis_url)
    router = TokenRouter(subscriber)
    await router.start()
    registry = Registry(redis)
    dispatcher = Dispatcher(redis, router, registry, max_queue=8, check_interval_s=0.2)
    yield AppState(
        settings=make_settings(),
        redis=redis,
        registry=registry,
        dispatcher=dispatcher,
        aliases=Aliases(redis, registry),
    )
    await router.stop()
    await subscriber.aclose()


@pytest.fixture
async def sdk(client: httpx.AsyncClient) -> AsyncIterator[openai.AsyncOpenAI]:
    """The real OpenAI SDK on ``/v1`` of the module's ``client`` (an API with workers)."""
    async with openai.AsyncOpenAI(
        base_url=f"{client.base_url}/v1", api_key="x", max_retries=0
    ) as sdk:
        yield sdk
