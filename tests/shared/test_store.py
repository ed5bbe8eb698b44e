"""The model store in Ollama's layout: blobs verified before they are visible, manifests
found case-insensitively, deletes that keep what other models share."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.store import DigestMismatch, Layer, Manifest, MediaType, Store, canonical_digest


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


async def _chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _model(store: Store, weights: bytes, template: str = "{{ .Prompt }}") -> Manifest:
    model = store.write_bytes(weights)
    tmpl = store.write_bytes(template.encode())
    config = store.write_bytes(b'{"model_format":"gguf","model_family":"gemma3"}')
    return Manifest(
        config=Layer(media_type=MediaType.CONFIG, digest=config, size=50),
        layers=[
            Layer(media_type=MediaType.MODEL, digest=model, size=len(weights)),
            Layer(media_type=MediaType.TEMPLATE, digest=tmpl, size=len(template)),
        ],
    )


def test_digests_are_checked_and_written_one_way() -> None:
    hexa = "ab" * 32
    assert canonical_digest(f"sha256-{hexa.upper()}") == f"sha256:{hexa}"
    for bad in ("sha256:abc", "md5:" + hexa, hexa, ""):
        with pytest.raises(InvalidRequest, match="invalid digest format"):
            canonical_digest(bad)


async def test_a_streamed_blob_is_visible_only_once_verified(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"GGUF" + bytes(range(256)) * 10
    path = await store.write_blob(_digest(data), _chunks(data))
    assert path.read_bytes() == data and store.has_blob(_digest(data))
    wrong = _digest(b"something else")
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        await store.write_blob(wrong, _chunks(data))
    assert not store.has_blob(wrong)
    with pytest.raises(PayloadTooLarge):
        await store.write_blob(_digest(b"x" * 100), _chunks(b"x" * 100), limit=50)
    # no temporary file is left behind by a refused write
    assert sorted(p.name for p in store.blobs.iterdir()) == [path.name]


def test_manifests_round_trip_and_are_found_in_any_casing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    manifest = _model(store, b"weights")
    stored = store.write_manifest("hf.co/User/Repo:Q4_K_M", manifest)
    assert stored.name == "hf.co/user/repo:q4_k_m"
    assert stored.digest == hashlib.sha256(stored.path.read_bytes()).hexdigest()
    assert store.get("HF.CO/user/REPO:q4_k_m") == stored
    assert [m.name for m in store.models()] == ["hf.co/user/repo:q4_k_m"]
    assert stored.size == sum(layer.size for layer in manifest.blobs())
    layer = stored.manifest.layer(MediaType.TEMPLATE)
    assert layer is not None and store.read_text(layer.digest) == "{{ .Prompt }}"
    # an Ollama directory written with capitals is read as it is
    other = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "Gemma3" / "270M"
    other.parent.mkdir(parents=True)
    other.write_bytes(manifest.dump())
    assert store.get("gemma3:270m") is not None


def test_a_manifest_naming_a_missing_blob_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    manifest = _model(store, b"weights")
    manifest.layers.append(Layer(media_type=MediaType.SYSTEM, digest=_digest(b"nope"), size=4))
    with pytest.raises(FileNotFoundError):
        store.write_manifest("m", manifest)
    assert store.models() == []


def test_delete_removes_only_the_blobs_nobody_else_names(tmp_path: Path) -> None:
    store = Store(tmp_path)
    shared_weights = _model(store, b"shared weights", template="a")
    store.write_manifest("first", shared_weights)
    second = _model(store, b"shared weights", template="b")
    store.write_manifest("second", second)
    uploaded = store.write_bytes(b"a blob for a model not created yet")
    removed = store.delete("first")
    assert removed is not None and store.get("first") is None
    model = second.layer(MediaType.MODEL)
    assert model is not None and store.has_blob(model.digest)  # the second still names it
    first_template = shared_weights.layer(MediaType.TEMPLATE)
    assert first_template is not None and not store.has_blob(first_template.digest)
    assert store.has_blob(uploaded)
    assert store.delete("first") is None
    copied = store.copy("second", "ns/third:v1")
    assert copied is not None and copied.name == "ns/third:v1"
    assert copied.manifest.model_dump() == second.model_dump()


def test_a_manifest_read_is_written_back_byte_for_byte(tmp_path: Path) -> None:
    """A registry's manifest keeps its bytes (and so its digest, /api/tags' digest); one
    changed since it was read is written from its fields."""
    store = Store(tmp_path)
    manifest = _model(store, b"weights")
    spaced = manifest.model_dump_json(by_alias=True, exclude_none=True, indent=3).encode()
    read = Manifest.read(spaced)
    stored = store.write_manifest("pulled", read)
    assert stored.path.read_bytes() == spaced
    copied = store.copy("pulled", "again")
    assert copied is not None and copied.digest == stored.digest
    read.layers.pop()
    assert store.write_manifest("changed", read).path.read_bytes() != spaced


def test_a_replaced_manifest_leaves_its_unused_blobs_behind_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    old = _model(store, b"old weights")
    assert store.replace_manifest("m", old) == []  # nothing replaced
    store.write_manifest("other", _model(store, b"shared weights"))
    new = _model(store, b"new weights", template="{{ .Prompt }}")  # same template blob
    removed = store.replace_manifest("m", new)
    assert removed == [old.layers[0].digest]  # the template and config are still used
    assert not store.has_blob(old.layers[0].digest)
    assert all(store.has_blob(layer.digest) for layer in new.blobs())


def test_digests_are_compared_canonically(tmp_path: Path) -> None:
    """A manifest that spells a blob ``sha256-<HEX>`` still keeps it."""
    store = Store(tmp_path)
    kept = _model(store, b"weights")
    spelled = kept.model_copy(deep=True)
    hexa = spelled.layers[0].digest.removeprefix("sha256:")
    spelled.layers[0].digest = f"sha256-{hexa.upper()}"
    store.write_manifest("b", spelled)
    store.write_manifest("a", kept)
    store.delete("a")
    assert store.has_blob(kept.layers[0].digest)


def test_an_unreadable_manifest_keeps_every_blob(tmp_path: Path) -> None:
    """Its blobs would look unused: nothing is removed while it cannot be read."""
    store = Store(tmp_path)
    gone = _model(store, b"weights of a")
    store.write_manifest("a", gone)
    store.write_manifest("b", _model(store, b"weights of b"))
    found = store.get("b")
    assert found is not None
    found.path.write_bytes(b"{not json")
    store.delete("a")
    assert store.get("a") is None
    assert all(store.has_blob(layer.digest) for layer in gone.blobs())
    assert store.prune(gone) == []


def test_writers_of_one_root_share_one_lock(tmp_path: Path) -> None:
    assert Store(tmp_path)._lock is Store(tmp_path / "." / "")._lock
    assert Store(tmp_path)._lock is not Store(tmp_path / "other")._lock
