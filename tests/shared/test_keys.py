from __future__ import annotations

import pathlib
import re

from shared import keys


def test_builders_share_one_prefix() -> None:
    built = [
        keys.job_stream("m:latest"),
        keys.token_channel("r"),
        keys.cancel_key("r"),
        keys.worker_key("w"),
        keys.WORKERS_INDEX,
    ]
    assert all(k.startswith(f"{keys.PREFIX}:") for k in built)
    assert len(set(built)) == len(built)


def test_blocking_read_stays_below_socket_timeout() -> None:
    from shared.redis import SOCKET_TIMEOUT_S

    assert keys.BLOCK_MS / 1000 < SOCKET_TIMEOUT_S


def test_no_other_module_spells_a_key() -> None:
    root = pathlib.Path(__file__).parents[2]
    literal = re.compile(r"""["']herd:""")
    offenders = [
        str(path.relative_to(root))
        for package in ("api", "worker", "shared")
        for path in (root / package).rglob("*.py")
        if path.name != "keys.py" and literal.search(path.read_text())
    ]
    assert offenders == []
