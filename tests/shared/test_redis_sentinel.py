"""``connect()`` with HERD_REDIS_SENTINELS: the client talks to the master the Sentinels
name (real redis-server master, replica and Sentinels), and finds the new one after a
failover or a READONLY reply from a demoted master."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from redis import Redis as SyncRedis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from cli.ports import free_port
from shared import keys
from shared.redis import connect, sentinel_addresses
from shared.settings import Settings
from tests.conftest import wait_for_http
from tests.polling import until
from tests.sentinel import SentinelCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[SentinelCluster]:
    with SentinelCluster() as started:
        yield started


def _settings(cluster: SentinelCluster, **overrides: Any) -> Settings:
    return Settings(redis_sentinels=cluster.sentinels, **overrides)


def test_sentinels_are_a_comma_separated_host_port_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_REDIS_SENTINELS", "s-0.redis:26379, s-1.redis:26379,[::1]:26380")
    monkeypatch.setenv("HERD_REDIS_SENTINEL_MASTER", "herd")
    monkeypatch.setenv("HERD_REDIS_SENTINEL_PASSWORD", "s3cret")
    settings = Settings()
    assert sentinel_addresses(settings) == [
        ("s-0.redis", 26379),
        ("s-1.redis", 26379),
        ("::1", 26380),
    ]
    assert settings.redis_sentinel_master == "herd"
    assert settings.redis_sentinel_password is not None
    assert "s3cret" not in repr(settings)  # a secret: never in a log line


@pytest.mark.parametrize("bad", ["s-0.redis", "s-0.redis:port", ":26379"])
def test_a_sentinel_without_a_port_is_refused(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("HERD_REDIS_SENTINELS", f"s-1:26379,{bad}")
    with pytest.raises(ValidationError, match="host:port"):
        Settings()


async def test_connect_with_sentinels_talks_to_the_master(cluster: SentinelCluster) -> None:
    client = connect(_settings(cluster, redis_url="redis://127.0.0.1:1/0"))  # URL unused
    pubsub_client = connect(_settings(cluster), pubsub=True)
    try:
        assert isinstance(client.connection_pool, SentinelConnectionPool)
        assert await client.set("sentinel:probe", "written")
        _, port = await client.connection_pool.get_master_address()  # type: ignore[no-untyped-call]
        assert port == cluster.master_port  # the master the Sentinels name ...
        assert (await client.info("replication"))["role"] == "master"  # ... and a master
        with SyncRedis(port=cluster.master_port) as master:
            assert master.get("sentinel:probe") == b"written"
        # pub/sub goes through the master too (workers publish there)
        pubsub = pubsub_client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe("sentinel:channel")
        assert await client.publish("sentinel:channel", "hello") == 1
        # the first read may be the subscription's confirmation (ignored: None)
        for _ in range(3):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
            if message is not None:
                break
        assert message is not None and message["data"] == b"hello"
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await pubsub_client.aclose()
        await client.aclose()


async def test_closing_the_client_closes_its_sentinel_connections(cluster: SentinelCluster) -> None:
    # redis-py's pool leaves them open: each would be an "unclosed Connection" at collection
    client = connect(_settings(cluster))
    assert await client.ping()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await client.aclose()
        del client
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_a_readonly_reply_from_a_demoted_master_reconnects_to_the_new_one(
    cluster: SentinelCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first lookup answers with the replica: what a pool meets when its master has
    # been demoted under it (writes there fail READONLY)
    client = connect(_settings(cluster))
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    manager: Sentinel = pool.sentinel_manager
    real = manager.discover_master
    answers: list[tuple[str, int]] = []

    async def stale_then_real(service_name: str) -> Any:
        address = ("127.0.0.1", cluster.replica_port) if not answers else await real(service_name)
        answers.append(address)
        return address

    monkeypatch.setattr(manager, "discover_master", stale_then_real)
    try:
        # no error reaches the caller: READONLY drops the connection, the retry reconnects
        assert await client.set("sentinel:readonly", "ok")
        assert answers[0][1] == cluster.replica_port
        assert answers[-1][1] == cluster.master_port
    finally:
        await client.aclose()


def test_serve_with_sentinels_embeds_no_redis_and_uses_their_master(
    cluster: SentinelCluster, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
    env |= {
        "HERD_ENGINE": "fake",
        "HERD_LOG_FORMAT": "json",
        "HERD_HOST": f"127.0.0.1:{port}",
        "HERD_REDIS_SENTINELS": cluster.sentinels,  # and no HERD_REDIS_URL
        "HERD_WORKER_ID": "sentinel-serve",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        serve = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", timeout_s=60)
        assert serve.poll() is None
        with SyncRedis(port=cluster.master_port) as master:
            assert master.exists(keys.worker_key("sentinel-serve"))  # its advert: on the master
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=30)
    assert b"embedded_redis_started" not in log.read_bytes()


async def test_after_a_failover_the_same_client_writes_to_the_new_master(
    cluster: SentinelCluster,
) -> None:
    # the last test of the module: it leaves the cluster with its master dead
    client = connect(_settings(cluster))
    reader = client.__class__(connection_pool=client.connection_pool, single_connection_client=True)
    try:
        assert await client.set("before", "1")
        assert await reader.ping()  # the worker's claim connection: pooled, and held
        cluster.kill(cluster.master_port)
        killed = time.monotonic()

        async def written() -> bool:
            try:
                return bool(await client.set("after", "1"))
            except RedisConnectionError:  # the failover window (MasterNotFoundError too)
                return False

        await until(written, timeout_s=20, interval_s=0.2, message="no write after failover")
        assert time.monotonic() - killed < 20
        assert cluster.master_address() == ("127.0.0.1", cluster.replica_port)
        assert await client.get("before") == b"1"  # replicated before the kill
        assert await reader.ping()  # the held connection found the new master too
        with SyncRedis(port=cluster.replica_port) as promoted:
            assert promoted.get("after") == b"1"
    finally:
        await reader.aclose()
        await client.aclose()
