"""A real Redis master, one replica and three Sentinels on free ports, for the Sentinel
tests. Failure detection is quick (``DOWN_AFTER_MS``) so a failover takes seconds."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from cli.embedded import redis_server_binary
from cli.ports import free_port

MASTER_NAME = "mymaster"
#: A master unanswered this long is subjectively down (Redis's default: 30 s).
DOWN_AFTER_MS = 1000
#: The failover's own time limit (default 3 min), short so a stalled one retries soon.
FAILOVER_TIMEOUT_MS = 3000


class SentinelCluster:
    """``with SentinelCluster() as c: c.sentinels`` — started, replicating and watched."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="herd-sentinel-")
        self.dir = Path(self._tmp.name)
        self.master_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def sentinels(self) -> str:
        """The ``HERD_REDIS_SENTINELS`` value."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def _spawn(self, port: int, *args: str) -> None:
        log = (self.dir / f"{port}.log").open("wb")
        with log:
            self.processes[port] = subprocess.Popen(
                [redis_server_binary(), *args], stdout=log, stderr=subprocess.STDOUT
            )

    def _server(self, port: int, *extra: str) -> None:
        data = self.dir / str(port)
        data.mkdir()
        self._spawn(
            port,
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)),
            *("--save", "", "--appendonly", "no"),
            *extra,
        )

    def start(self) -> None:
        self._server(self.master_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        # the replica is in sync before the Sentinels' first look at the master, so they
        # learn of it at once (they would otherwise find it at their next INFO, 10 s on)
        self._until(lambda: self.role(self.replica_port) == "slave-up", "replica in sync")
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"  # Sentinel rewrites it: a file of its own
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self._spawn(port, str(conf), "--sentinel")
        self._until(self._watched, "Sentinels see each other and the replica", timeout_s=20)

    def _watched(self) -> bool:
        for port in self.sentinel_ports:
            state = self._ask(port, lambda c: c.sentinel_master(MASTER_NAME))  # type: ignore[no-untyped-call]
            if not state or state["num-other-sentinels"] != 2 or state["num-slaves"] != 1:
                return False
        return True

    def master_address(self, sentinel_port: int | None = None) -> tuple[str, int] | None:
        """The master as a Sentinel names it now."""
        port = sentinel_port or self.sentinel_ports[0]
        reply = self._ask(port, lambda c: c.sentinel_get_master_addr_by_name(MASTER_NAME))  # type: ignore[no-untyped-call]
        return None if not reply else (str(reply[0]), int(reply[1]))

    def role(self, port: int) -> str | None:
        """``master``, ``slave-up`` (a replica in sync), ``slave-down``, or None (no answer)."""
        info = self._ask(port, lambda c: c.info("replication"))
        if not info:
            return None
        if info["role"] == "master":
            return "master"
        return "slave-up" if info.get("master_link_status") == "up" else "slave-down"

    def kill(self, port: int) -> None:
        """SIGKILL: no shutdown, no last words to the replica."""
        process = self.processes[port]
        process.kill()
        process.wait()

    @staticmethod
    def _ask(port: int, command: Callable[[Redis], Any]) -> Any:
        """``command``'s reply from the server at ``port``; None if it does not answer."""
        with (
            contextlib.suppress(RedisError, OSError),
            Redis(port=port, socket_timeout=1, decode_responses=True) as client,
        ):
            return command(client)
        return None

    @staticmethod
    def _until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s} s")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._tmp.cleanup()

    def __enter__(self) -> SentinelCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
