"""The catalog over real Redis: aliases, deletions, and what every pod then resolves."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from api.catalog import Catalog
from api.registry import CACHE_S, Registry
from shared import keys
from tests.api.conftest import advert, advertise


@pytest.fixture
async def catalog(redis: Redis) -> Catalog:
    await advertise(redis, [advert("a:latest", digest="a" * 64), advert("b:latest")])
    return Catalog(redis, Registry(redis))


async def _names(catalog: Catalog) -> set[str]:
    return {entry.name for entry in await catalog.entries()}


async def test_served_models_resolve_to_themselves(catalog: Catalog) -> None:
    found = await catalog.resolve("a:latest")
    assert found is not None and found.name == "a:latest"
    assert await catalog.resolve("c:latest") is None
    assert await _names(catalog) == {"a:latest", "b:latest"}


async def test_copy_makes_an_alias_any_pod_resolves(catalog: Catalog, redis: Redis) -> None:
    assert await catalog.copy("a:latest", "mine:v1")
    other_pod = Catalog(redis, Registry(redis))
    found = await other_pod.resolve("mine:v1")
    assert found is not None and found.name == "a:latest"
    entries = {entry.name: entry.advert.digest for entry in await other_pod.entries()}
    assert entries == {"a:latest": "a" * 64, "b:latest": "d" * 64, "mine:v1": "a" * 64}


async def test_copy_of_a_copy_points_at_the_served_model(catalog: Catalog) -> None:
    await catalog.copy("a:latest", "one:latest")
    await catalog.copy("one:latest", "two:latest")
    await catalog.delete("one:latest")
    found = await catalog.resolve("two:latest")
    assert found is not None and found.name == "a:latest"


async def test_copy_of_nothing_fails(catalog: Catalog) -> None:
    assert not await catalog.copy("nope:latest", "x:latest")
    assert await catalog.resolve("x:latest") is None


async def test_delete_hides_a_served_model_and_copy_brings_it_back(catalog: Catalog) -> None:
    assert await catalog.delete("a:latest")
    assert await catalog.resolve("a:latest") is None
    assert await _names(catalog) == {"b:latest"}
    assert not await catalog.delete("a:latest")  # already gone
    # a deleted model cannot be the source of a copy
    assert not await catalog.copy("a:latest", "x:latest")
    # an alias survives the deletion of its source, as a copied model does
    await catalog.copy("b:latest", "keep:latest")
    await catalog.delete("b:latest")
    found = await catalog.resolve("keep:latest")
    assert found is not None and found.name == "b:latest"
    assert await _names(catalog) == {"keep:latest"}
    # copying onto the hidden name makes it a name again
    assert await catalog.copy("keep:latest", "b:latest")
    assert await _names(catalog) == {"keep:latest", "b:latest"}
    found = await catalog.resolve("b:latest")
    assert found is not None and found.name == "b:latest"


async def test_copy_onto_a_served_name_shadows_it_until_deleted(catalog: Catalog) -> None:
    await catalog.copy("a:latest", "b:latest")
    found = await catalog.resolve("b:latest")
    assert found is not None and found.name == "a:latest"
    assert await catalog.delete("b:latest")
    assert await catalog.resolve("b:latest") is None  # the name is gone, not unshadowed
    assert await _names(catalog) == {"a:latest"}


async def test_delete_of_nothing_fails(catalog: Catalog) -> None:
    assert not await catalog.delete("nope:latest")


async def test_aliases_of_models_no_worker_serves_are_not_listed(
    catalog: Catalog, redis: Redis
) -> None:
    async with redis.pipeline() as pipe:
        pipe.hset(keys.CATALOG_ALIASES, "x:latest", "gone:latest")
        await pipe.execute()
    assert "x:latest" not in await _names(catalog)
    assert await catalog.resolve("x:latest") is None


async def test_a_pod_sees_its_own_change_at_once_and_others_within_the_cache(
    catalog: Catalog, redis: Redis
) -> None:
    other_pod = Catalog(redis, Registry(redis))
    assert await other_pod.resolve("mine:latest") is None  # read (and cached) before the copy
    assert await catalog.copy("a:latest", "mine:latest")
    assert await catalog.resolve("mine:latest") is not None
    assert await other_pod.resolve("mine:latest") is None  # still its cached view
    await asyncio.sleep(CACHE_S)
    found = await other_pod.resolve("mine:latest")
    assert found is not None and found.name == "a:latest"
