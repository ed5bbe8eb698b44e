"""``Store``: the models of one ``HERD_MODELS_DIR``, read and written in Ollama's layout.

Names are matched case-insensitively, as Ollama does (an existing directory keeps its
casing; a new one is written lower-case). Writes go to a temporary file renamed into place,
so a reader sees the old manifest or the new one, never half of one; a blob is renamed into
``blobs/`` only after its digest is checked.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from shared import names
from shared.errors import InvalidRequest
from shared.store.blobs import DigestMismatch, canonical_digest, file_name, sha256_of, write_stream
from shared.store.manifest import Manifest

log = structlog.get_logger()


@dataclass(frozen=True)
class StoredModel:
    """A manifest in the store, as ``/api/tags`` reports it."""

    #: Ollama's shortest display form, lower-case (``gemma3:270m``, ``hf.co/u/r:q4_k_m``).
    name: str
    path: Path
    manifest: Manifest
    #: The manifest file's sha256, hex without the ``sha256:`` prefix (Ollama's digest).
    digest: str
    modified_at: datetime

    @property
    def size(self) -> int:
        return self.manifest.size()


class ManifestsUnreadable(Exception):
    """A manifest file could not be read: which blobs are in use is not known."""


#: One lock per store root in this process: its writers (a pull, a create, a delete) run
#: one at a time, so a prune never races a manifest that is being written.
_LOCKS: dict[Path, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_of(root: Path) -> threading.RLock:
    key = root.absolute()
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.RLock())


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self._lock = _lock_of(root)

    # blobs

    def blob_path(self, digest: str) -> Path:
        return self.blobs / file_name(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def partial_path(self, digest: str) -> Path:
        """Where an unfinished download of ``digest`` is kept (a pull resumes from it)."""
        return self.blobs / f"{file_name(digest)}-partial"

    def commit(self, digest: str, partial: Path, *, hashed: str | None = None) -> Path:
        """Make ``partial`` the blob ``digest``: its sha256 (``hashed`` if the caller hashed
        it on the way) must match, or it is removed and ``DigestMismatch`` raised."""
        expected = canonical_digest(digest)
        got = hashed or sha256_of(partial)
        if got != expected:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(expected, got)
        target = self.blob_path(expected)
        os.replace(partial, target)
        return target

    async def write_blob(
        self, digest: str, chunks: AsyncIterable[bytes], *, limit: int | None = None
    ) -> Path:
        """Store a streamed blob under ``digest``: hashed while written, never held in
        memory; a file of its own per writer, so concurrent uploads cannot mix."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        temp = self.blobs / f"{file_name(digest)}-upload-{uuid.uuid4().hex}"
        try:
            hashed, _ = await write_stream(temp, chunks, limit=limit)
            return self.commit(digest, temp, hashed=hashed)
        finally:
            temp.unlink(missing_ok=True)

    def write_bytes(self, data: bytes) -> str:
        """Store a small blob (a config, a template, parameters); returns its digest."""
        digest = f"sha256:{sha256(data).hexdigest()}"
        if not self.has_blob(digest):
            self.blobs.mkdir(parents=True, exist_ok=True)
            temp = self.blobs / f"{file_name(digest)}-upload-{uuid.uuid4().hex}"
            temp.write_bytes(data)
            self.commit(digest, temp, hashed=digest)
        return digest

    def read_text(self, digest: str) -> str:
        return self.blob_path(digest).read_text(encoding="utf-8")

    def read_json(self, digest: str) -> Any:
        return orjson.loads(self.blob_path(digest).read_bytes())

    # manifests

    def _find(self, name: names.Name) -> Path | None:
        """The manifest file of ``name``, matching every part case-insensitively."""
        folder = self.manifests
        for part in (name.host, name.namespace, name.model, name.tag):
            if not folder.is_dir():
                return None
            exact = folder / part
            if exact.exists():
                folder = exact
                continue
            folded = [entry for entry in folder.iterdir() if entry.name.lower() == part]
            if not folded:
                return None
            folder = folded[0]
        return folder if folder.is_file() else None

    def _load(self, path: Path, name: names.Name) -> StoredModel | None:
        try:
            raw = path.read_bytes()
            manifest = Manifest.read(raw)
            modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except (OSError, ValidationError, ValueError) as exc:
            log.warning("manifest_unreadable", path=str(path), error=str(exc))
            return None
        return StoredModel(name.display(), path, manifest, sha256(raw).hexdigest(), modified)

    def get(self, name: str) -> StoredModel | None:
        """The model called ``name`` (any spelling Ollama accepts), if stored."""
        parsed = names.parse(name)
        path = self._find(parsed)
        return None if path is None else self._load(path, parsed)

    def models(self) -> list[StoredModel]:
        """Every readable manifest, newest first (``/api/tags``' order)."""
        found = [model for path, name in self._walk() if (model := self._load(path, name))]
        return sorted(found, key=lambda model: model.modified_at, reverse=True)

    def _walk(self) -> Iterator[tuple[Path, names.Name]]:
        if not self.manifests.is_dir():
            return
        for path in sorted(self.manifests.glob("*/*/*/*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            host, namespace, model, tag = path.relative_to(self.manifests).parts
            with contextlib.suppress(Exception):  # a stray file: not a model
                yield path, names.parse(f"{host}/{namespace}/{model}:{tag}")

    def write_manifest(self, name: str, manifest: Manifest) -> StoredModel:
        """Write ``name``'s manifest; every blob it names must be in the store already."""
        with self._lock:
            return self._write_manifest(name, manifest)

    def _write_manifest(self, name: str, manifest: Manifest) -> StoredModel:
        missing = [layer.digest for layer in manifest.blobs() if not self.has_blob(layer.digest)]
        if missing:
            raise FileNotFoundError(f"blobs missing from the store: {', '.join(missing)}")
        parsed = names.parse(name)
        path = self._find(parsed) or self.manifests.joinpath(
            parsed.host, parsed.namespace, parsed.model, parsed.tag
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        temp.write_bytes(manifest.dump())
        os.replace(temp, path)
        stored = self._load(path, parsed)
        assert stored is not None  # just written
        return stored

    def replace_manifest(self, name: str, manifest: Manifest) -> list[str]:
        """Write ``name``'s manifest over any older one, then remove the older one's blobs
        that no model names any more (Ollama's ``removing unused layers`` after a pull or a
        create); the digests removed."""
        with self._lock:
            old = self.get(name)
            self._write_manifest(name, manifest)
            return [] if old is None else self.prune(old.manifest)

    def copy(self, source: str, destination: str) -> StoredModel | None:
        """``destination`` as a second name of ``source``'s manifest; None if no source."""
        with self._lock:
            found = self.get(source)
            return None if found is None else self._write_manifest(destination, found.manifest)

    def delete(self, name: str) -> StoredModel | None:
        """Remove ``name``'s manifest, then those of its blobs no other manifest names
        (only its own: a blob uploaded for a model not created yet stays)."""
        with self._lock:
            found = self.get(name)
            if found is None:
                return None
            found.path.unlink()
            with contextlib.suppress(OSError):  # empty folders go; a non-empty one stays
                for folder in list(found.path.parents)[:3]:
                    folder.rmdir()
            self.prune(found.manifest)
            return found

    def prune(self, replaced: Manifest) -> list[str]:
        """Remove the blobs of ``replaced`` (a manifest no longer stored under its name) that
        no stored manifest names; the digests removed. If any manifest cannot be read, no
        blob goes: its blobs would look unused."""
        with self._lock:
            try:
                kept = self._used()
            except ManifestsUnreadable as exc:
                log.warning("prune_skipped", error=str(exc))
                return []
            removed: list[str] = []
            for layer in replaced.blobs():
                try:
                    digest = canonical_digest(layer.digest)
                except InvalidRequest:
                    continue  # never a file of the store
                if digest in kept or digest in removed:
                    continue
                path = self.blob_path(digest)
                if path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(digest)
            return removed

    def _used(self) -> set[str]:
        """Every blob any manifest file names (canonical digests); raises
        ``ManifestsUnreadable`` if one cannot be read."""
        used: set[str] = set()
        if not self.manifests.is_dir():
            return used
        for path in self.manifests.glob("*/*/*/*"):
            if not path.is_file() or path.name.startswith("."):
                continue  # a temporary file of a write in flight is not a model yet
            try:
                manifest = Manifest.read(path.read_bytes())
                used.update(canonical_digest(layer.digest) for layer in manifest.blobs())
            except (OSError, ValidationError, ValueError, InvalidRequest) as exc:
                raise ManifestsUnreadable(f"{path}: {exc}") from exc
        return used
