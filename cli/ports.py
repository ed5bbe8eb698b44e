"""Ports: a free one for a child, and a clear answer when the one asked for is taken."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from shared.hostaddr import HostAddress


class PortUnavailable(Exception):
    """The address a component must listen on cannot be bound (taken, or not this host's)."""


#: Where the kernel picks outgoing connections' local ports (Linux's default range).
_EPHEMERAL = (32768, 60999)
#: Free ports are drawn below that range: a port handed to a child that has not bound it
#: yet cannot be taken meanwhile as the source port of some client's connection.
_BELOW = 12_000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on, outside the ephemeral range when it can."""
    low = _ephemeral_range()[0]
    start = max(1024, low - _BELOW)
    for _ in range(50):
        port = random.randrange(start, low) if low > start else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    with socket.socket() as sock:  # a crowded range: any port the kernel gives
        sock.bind(("127.0.0.1", 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def listen(address: HostAddress, setting: str) -> socket.socket:
    """A socket bound to ``address`` as uvicorn binds one, or ``PortUnavailable`` naming
    ``setting``: one line for the user instead of uvicorn's exit in the middle of start-up."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # uvicorn sets it too: a port in TIME_WAIT is free for it, so it is free here
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise PortUnavailable(
            f"cannot listen on {address.host}:{address.port} ({setting}): {reason}"
        ) from exc
    return sock


def check_can_listen(address: HostAddress, setting: str) -> None:
    """``listen`` for a server that binds its own socket (uvicorn's ``herd api``): only the
    moment between this check and its bind is left uncovered."""
    listen(address, setting).close()
