"""Aliases and deletions over real Redis, and what every pod then resolves."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from api.aliases import Aliases
from api.registry import CACHE_S, Registry
from shared import keys
from tests.api.conftest import advert, advertise


@pytest.fixture
async def aliases(redis: Redis) -> Aliases:
    await advertise(redis, [advert("a:latest", digest="a" * 64), advert("b:latest")])
    return Aliases(redis, Registry(redis))


async def _names(aliases: Aliases) -> set[str]:
    return {entry.name for entry in await aliases.entries()}


async def test_served_models_resolve_to_themselves(aliases: Aliases) -> None:
    found = await aliases.resolve("a:latest")
    assert found is not None and found.name == "a:latest"
    assert await aliases.resolve("c:latest") is None
    assert await _names(aliases) == {"a:latest", "b:latest"}


async def test_copy_makes_an_alias_any_pod_resolves(aliases: Aliases, redis: Redis) -> None:
    assert await aliases.copy("a:latest", "mine:v1")
    other_pod = Aliases(redis, Registry(redis))
    found = await other_pod.resolve("mine:v1")
    assert found is not None and found.name == "a:latest"
    entries = {entry.name: entry.advert.digest for entry in await other_pod.entries()}
    assert entries == {"a:latest": "a" * 64, "b:latest": "d" * 64, "mine:v1": "a" * 64}


async def test_copy_of_a_copy_points_at_the_served_model(aliases: Aliases) -> None:
    await aliases.copy("a:latest", "one:latest")
    await aliases.copy("one:latest", "two:latest")
    await aliases.delete("one:latest")
    found = await aliases.resolve("two:latest")
    assert found is not None and found.name == "a:latest"


async def test_copy_of_nothing_fails(aliases: Aliases) -> None:
    assert not await aliases.copy("nope:latest", "x:latest")
    assert await aliases.resolve("x:latest") is None


async def test_delete_hides_a_served_model_and_copy_brings_it_back(aliases: Aliases) -> None:
    assert await aliases.delete("a:latest")
    assert await aliases.resolve("a:latest") is None
    assert await _names(aliases) == {"b:latest"}
    assert not await aliases.delete("a:latest")  # already gone
    # a deleted model cannot be the source of a copy
    assert not await aliases.copy("a:latest", "x:latest")
    # an alias survives the deletion of its source, as a copied model does
    await aliases.copy("b:latest", "keep:latest")
    await aliases.delete("b:latest")
    found = await aliases.resolve("keep:latest")
    assert found is not None and found.name == "b:latest"
    assert await _names(aliases) == {"keep:latest"}
    # copying onto the hidden name makes it a name again
    assert await aliases.copy("keep:latest", "b:latest")
    assert await _names(aliases) == {"keep:latest", "b:latest"}
    found = await aliases.resolve("b:latest")
    assert found is not None and found.name == "b:latest"


async def test_copy_onto_a_served_name_shadows_it_until_deleted(aliases: Aliases) -> None:
    await aliases.copy("a:latest", "b:latest")
    found = await aliases.resolve("b:latest")
    assert found is not None and found.name == "a:latest"
    assert await aliases.delete("b:latest")
    assert await aliases.resolve("b:latest") is None  # the name is gone, not unshadowed
    assert await _names(aliases) == {"a:latest"}


async def test_delete_of_nothing_fails(aliases: Aliases) -> None:
    assert not await aliases.delete("nope:latest")


async def test_aliases_of_models_no_worker_serves_are_not_listed(
    aliases: Aliases, redis: Redis
) -> None:
    async with redis.pipeline() as pipe:
        pipe.hset(keys.CATALOG_ALIASES, "x:latest", "gone:latest")
        await pipe.execute()
    assert "x:latest" not in await _names(aliases)
    assert await aliases.resolve("x:latest") is None


async def test_a_pod_sees_its_own_change_at_once_and_others_within_the_cache(
    aliases: Aliases, redis: Redis
) -> None:
    other_pod = Aliases(redis, Registry(redis))
    assert await other_pod.resolve("mine:latest") is None  # read (and cached) before the copy
    assert await aliases.copy("a:latest", "mine:latest")
    assert await aliases.resolve("mine:latest") is not None
    assert await other_pod.resolve("mine:latest") is None  # still its cached view
    await asyncio.sleep(CACHE_S)
    found = await other_pod.resolve("mine:latest")
    assert found is not None and found.name == "a:latest"


async def test_lookup_takes_a_clients_name_and_never_raises(aliases: Aliases) -> None:
    found = await aliases.lookup("A")  # normalised: gemma3 -> gemma3:latest, any case
    assert found is not None and found.name == "a:latest"
    # the checks in api.requests raise these at their place in Ollama's order
    assert await aliases.lookup("") is None
    assert await aliases.lookup("a/b/c/d") is None
    assert await aliases.lookup("nope") is None
