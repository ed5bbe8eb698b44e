from __future__ import annotations

import socket

from cli.embedded import EmbeddedRedis


def test_embedded_redis_answers_and_stops() -> None:
    with EmbeddedRedis() as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(16).startswith(b"+PONG")
        process = server.process
    assert process is not None and process.poll() is not None
