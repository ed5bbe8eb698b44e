"""Ports: a free one for a child, and a clear answer when the one asked for is taken."""

from __future__ import annotations

import socket

from shared.hostaddr import HostAddress


class PortUnavailable(Exception):
    """The address a component must listen on cannot be bound (taken, or not this host's)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
