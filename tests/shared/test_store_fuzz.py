"""Hostile names, digests and manifests against the store (a registry's manifest, a client's
`files` and names): 10,000 of them, and not one file touched outside the store."""

from __future__ import annotations

import os
import random
import string
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.errors import HerdError
from shared.store import Layer, Manifest, MediaType, Store

N = 10_000
SEED = 20261202
TRAVERSALS = [
    "..", "../", "../../etc/passwd", "/etc/passwd", "..\\..\\x", "a/../../b", "%2e%2e/x",
    "sha256:../../x", "sha256-" + "../" * 5, "\x00", "a\x00b", "~root", "//host/share", ".",
    "sha256:" + "0" * 63 + "/", "x" * 400, "registry.ollama.ai/../../../tmp/x:latest",
    "a/b/c/d/e", "ns/../m:t", "m:../../t", "m:t/../../u", "..:..", "CON", "nul:latest",
]  # fmt: skip


def _text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(TRAVERSALS) + rng.choice(["", ":latest", "/x", "-1"])
    alphabet = string.ascii_letters + string.digits + "._-:/\\~%\x00é"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90)))


def _digest(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return "sha256:" + "".join(rng.choice("0123456789abcdef") for _ in range(64))
    return rng.choice(["sha256:", "sha256-", ""]) + _text(rng)


def _snapshot(root: Path) -> set[tuple[str, int]]:
    return {
        (str(path), path.stat().st_size)
        for path in root.rglob("*")
        if path.is_file() or path.is_symlink()
    }


@pytest.mark.timeout(300)
def test_hostile_inputs_touch_nothing_outside_the_store(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "passwd").write_text("root:x:0:0")
    root = outside / "deep" / "store"
    store = Store(root)
    real = store.write_bytes(b"weights")
    before = _snapshot(tmp_path)
    rng = random.Random(SEED)
    refused = 0
    for _ in range(N):
        name, digest = _text(rng), _digest(rng)
        layers = [Layer(media_type=MediaType.MODEL, digest=rng.choice([real, digest]), size=7)]
        manifest = Manifest(
            config=Layer(media_type=MediaType.CONFIG, digest=real, size=7), layers=layers
        )
        action = rng.randrange(6)
        try:
            if action == 0:
                store.write_manifest(name, manifest)
            elif action == 1:
                store.get(name)
            elif action == 2:
                store.copy(name, _text(rng))
            elif action == 3:
                store.delete(name)
            elif action == 4:
                store.has_blob(digest)
                store.partial_path(digest)
            else:
                Manifest.read(_text(rng).encode())
        except (HerdError, FileNotFoundError, ValidationError):
            refused += 1
    after = _snapshot(tmp_path)
    inside = str(root) + os.sep
    escaped = sorted(p for p, _ in after ^ before if not p.startswith(inside))
    assert escaped == [], escaped[:10]
    assert (outside / "etc" / "passwd").read_text() == "root:x:0:0"
    assert refused > N // 2  # most of them are refused, by name or digest, before any path
