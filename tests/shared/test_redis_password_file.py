"""HERD_REDIS_PASSWORD_FILE and HERD_REDIS_SENTINEL_PASSWORD_FILE against a real
redis-server that requires a password (and a real Sentinel that does too): the file's
password is used, a wrong one fails auth, and one that cannot be read is a one-line error
naming the setting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import AuthenticationError

from cli.embedded import redis_server_binary
from cli.ports import free_port
from shared.redis import RedisConfigError, connect, redis_passwords
from shared.settings import Settings

PASSWORD = "data-s3cret"
SENTINEL_PASSWORD = "sentinel-s3cret"


def _spawn(args: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [redis_server_binary(), *args], stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited: {log.read_text()}")
        try:
            # a server that requires a password still answers PING with -NOAUTH
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64):
                    return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not answer within 10 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _Servers:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.sentinel_port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"  # no password in the URL


@pytest.fixture(scope="module")
def servers() -> Iterator[_Servers]:
    """A redis-server with requirepass, and one Sentinel (requirepass too) watching it."""
    with tempfile.TemporaryDirectory(prefix="herd-redis-auth-") as tmp:
        found = _Servers(Path(tmp))
        data = found.root / "data"
        data.mkdir()
        master = _spawn(
            [
                *("--port", str(found.port), "--bind", "127.0.0.1", "--dir", str(data)),
                *("--save", "", "--appendonly", "no", "--requirepass", PASSWORD),
            ],
            found.port,
            found.root / "redis.log",
        )
        conf = found.root / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        conf.write_text(
            f"port {found.sentinel_port}\nbind 127.0.0.1\ndir {found.root}\n"
            f"sentinel monitor mymaster 127.0.0.1 {found.port} 1\n"
            f"sentinel auth-pass mymaster {PASSWORD}\n"
            f"requirepass {SENTINEL_PASSWORD}\n"
        )
        try:
            sentinel = _spawn(
                [str(conf), "--sentinel"], found.sentinel_port, found.root / "sentinel.log"
            )
        except BaseException:
            _stop(master)
            raise
        try:
            yield found
        finally:
            _stop(sentinel)
            _stop(master)


def _file(tmp_path: Path, text: str, name: str = "password") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def _ping(settings: Settings) -> bool:
    client = connect(settings)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def test_the_password_file_is_used(servers: _Servers, tmp_path: Path) -> None:
    # a Secret's value often ends in a newline: that one is not part of the password
    path = _file(tmp_path, PASSWORD + "\n")
    assert await _ping(Settings(redis_url=servers.url, redis_password_file=path))


async def test_the_file_wins_over_the_plain_setting(servers: _Servers, tmp_path: Path) -> None:
    settings = Settings(
        redis_url=servers.url, redis_password="stale", redis_password_file=_file(tmp_path, PASSWORD)
    )
    assert await _ping(settings)


async def test_only_one_trailing_newline_is_dropped(servers: _Servers, tmp_path: Path) -> None:
    path = _file(tmp_path, PASSWORD + "\n\n")
    assert redis_passwords(Settings(redis_password_file=path))[0] == PASSWORD + "\n"


async def test_a_wrong_password_file_fails_auth(servers: _Servers, tmp_path: Path) -> None:
    settings = Settings(redis_url=servers.url, redis_password_file=_file(tmp_path, "wrong\n"))
    with pytest.raises(AuthenticationError):
        await _ping(settings)


async def test_a_rotated_file_is_read_by_the_next_client(servers: _Servers, tmp_path: Path) -> None:
    path = _file(tmp_path, "old\n")
    settings = Settings(redis_url=servers.url, redis_password_file=path)
    with pytest.raises(AuthenticationError):
        await _ping(settings)
    path.write_text(PASSWORD + "\n")  # what the kubelet does to a mounted Secret
    assert await _ping(settings)


@pytest.mark.parametrize(
    ("field", "setting"),
    [
        ("redis_password_file", "HERD_REDIS_PASSWORD_FILE"),
        ("redis_sentinel_password_file", "HERD_REDIS_SENTINEL_PASSWORD_FILE"),
    ],
)
def test_a_missing_file_is_an_error_naming_the_setting(
    tmp_path: Path, field: str, setting: str
) -> None:
    values: dict[str, Any] = {"redis_url": "redis://127.0.0.1:1/0", field: tmp_path / "absent"}
    settings = Settings(**values)
    with pytest.raises(RedisConfigError) as failure:
        connect(settings)
    assert str(failure.value) == (
        f"{setting}: cannot read {tmp_path / 'absent'} (No such file or directory)"
    )


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    settings = Settings(redis_password_file=_file(tmp_path, "\n"))
    with pytest.raises(RedisConfigError, match=r"HERD_REDIS_PASSWORD_FILE: .* is empty"):
        redis_passwords(settings)


@pytest.mark.parametrize("command", ["api", "worker"])
def test_herd_reports_a_missing_file_in_one_line(tmp_path: Path, command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
    env |= {
        "HERD_REDIS_URL": "redis://127.0.0.1:1/0",
        "HERD_REDIS_PASSWORD_FILE": str(tmp_path / "absent"),
        "HERD_HOST": f"127.0.0.1:{free_port()}",
        "HERD_WORKER_HEALTH_ADDR": f"127.0.0.1:{free_port()}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli", command], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.decode() == (
        f"Error: HERD_REDIS_PASSWORD_FILE: cannot read {tmp_path / 'absent'} "
        "(No such file or directory)\n"
    )


def _sentinel_settings(servers: _Servers, tmp_path: Path, sentinel_password: str) -> Settings:
    values: dict[str, Any] = {
        "redis_sentinels": f"127.0.0.1:{servers.sentinel_port}",
        "redis_password_file": _file(tmp_path, PASSWORD + "\n"),
        "redis_sentinel_password_file": _file(tmp_path, sentinel_password + "\n", "sentinel"),
    }
    return Settings(**values)


async def test_the_sentinel_password_file_is_used(servers: _Servers, tmp_path: Path) -> None:
    assert await _ping(_sentinel_settings(servers, tmp_path, SENTINEL_PASSWORD))


async def test_a_wrong_sentinel_password_file_finds_no_master(
    servers: _Servers, tmp_path: Path
) -> None:
    # redis-py skips a Sentinel that refuses it; with none left, no master is found
    with pytest.raises(MasterNotFoundError):
        await _ping(_sentinel_settings(servers, tmp_path, "wrong"))
