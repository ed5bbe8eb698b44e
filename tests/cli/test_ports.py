"""Free ports for children: outside the kernel's ephemeral range, so that a port handed to a
child that has not bound it yet is never some client connection's source port meanwhile."""

from __future__ import annotations

import socket

import pytest

from cli import ports


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    low, _ = ports._ephemeral_range()
    for _ in range(20):
        port = ports.free_port()
        assert port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.free_port()))
        taken.listen()
        held = taken.getsockname()[1]
        draws = iter([held, held, held + 1])  # the taken one comes up first, twice
        monkeypatch.setattr("cli.ports.random.randrange", lambda *_: next(draws))
        assert ports.free_port() == held + 1
