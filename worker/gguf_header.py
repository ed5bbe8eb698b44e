"""Reading a GGUF file's header: its key-value metadata and tensor shapes, never the weights.

``gguf.GGUFReader`` builds a numpy view per array element, which takes over 10 s for a
262k-token vocabulary (gemma3); this reads the same section with ``struct`` in a fraction
of a second, using the ``gguf`` package's type codes.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

#: Arrays longer than this are read as ``[]`` unless read in full (Ollama's /api/show rule).
SHORT_ARRAY = 5

#: struct formats of GGUF's scalar value types (``worker.memory`` reads with them too).
SCALARS: dict[gguf.GGUFValueType, str] = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}
_NUMPY: dict[gguf.GGUFValueType, str] = {
    gguf.GGUFValueType.UINT8: "<u1",
    gguf.GGUFValueType.INT8: "<i1",
    gguf.GGUFValueType.UINT16: "<u2",
    gguf.GGUFValueType.INT16: "<i2",
    gguf.GGUFValueType.UINT32: "<u4",
    gguf.GGUFValueType.INT32: "<i4",
    gguf.GGUFValueType.FLOAT32: "<f4",
    gguf.GGUFValueType.BOOL: "?",
    gguf.GGUFValueType.UINT64: "<u8",
    gguf.GGUFValueType.INT64: "<i8",
    gguf.GGUFValueType.FLOAT64: "<f8",
}

#: llama.cpp's names for fill-in-the-middle tokens (``llama-vocab.cpp``), prefix/suffix/middle.
FIM_TEXTS = (
    (
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<\uff5cfim\u2581begin\uff5c>",
        "<PRE>",
        "▁<PRE>",
    ),
    (
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<\uff5cfim\u2581hole\uff5c>",
        "<SUF>",
        "▁<SUF>",
    ),
    (
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<\uff5cfim\u2581end\uff5c>",
        "<MID>",
        "▁<MID>",
    ),
)
_FIM_KEYS = (
    ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
)


class GGUFError(ValueError):
    """The file is not a GGUF this reader understands."""


@dataclass(frozen=True)
class Header:
    #: Every key-value pair; arrays are lists (shortened to ``[]`` unless read in full).
    metadata: dict[str, Any]
    parameter_count: int
    #: Token ids of the vocabulary's fill-in-the-middle prefix, suffix, middle (if any).
    fim_tokens: tuple[int, int, int] | None
    #: Bytes before the tensor data: everything that describes the model.
    header_bytes: int
    #: The text of each token a ``tokenizer.ggml.*_token_id`` key names (BOS, EOS, ...).
    special_tokens: dict[int, str]


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data, self.pos = data, 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.unpack("<Q")
        raw = self.data[self.pos : self.pos + size]
        self.pos += size
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: gguf.GGUFValueType, *, full: bool, key: str, out: _Scan) -> Any:
        if kind == gguf.GGUFValueType.STRING:
            return self.string()
        if kind == gguf.GGUFValueType.FLOAT32:
            return _float32(self.unpack("<f"))
        if kind in SCALARS:
            return self.unpack(SCALARS[kind])
        if kind != gguf.GGUFValueType.ARRAY:
            raise GGUFError(f"unknown value type {kind}")
        item = gguf.GGUFValueType(self.unpack("<I"))
        count = self.unpack("<Q")
        if item == gguf.GGUFValueType.STRING:
            items = [self.string() for _ in range(count)]
            if key == "tokenizer.ggml.tokens":
                out.tokens = items
            return items if full or count <= SHORT_ARRAY else []
        if item in _NUMPY:
            dtype = np.dtype(_NUMPY[item])
            start, self.pos = self.pos, self.pos + dtype.itemsize * count
            if not full and count > SHORT_ARRAY:
                return []
            values: list[Any] = np.frombuffer(self.data, dtype, count, start).tolist()
            if item == gguf.GGUFValueType.FLOAT32 and count <= SHORT_ARRAY:
                values = [_float32(v) for v in values]
            return values
        # arrays of arrays: rare, read one by one
        return [self.value(item, full=full, key="", out=out) for _ in range(count)]


@dataclass
class _Scan:
    tokens: list[str] | None = None


def _float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (``1e-06``, not ``9.99e-07``)."""
    return float(str(np.float32(value)))


def read_header(path: Path, *, full: bool = False) -> Header:
    """The key-value metadata and tensor shapes of a GGUF (v2 or v3, little-endian)."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cur = _Cursor(data)
        if data[:4] != b"GGUF":
            raise GGUFError(f"{path.name} is not a GGUF file")
        cur.pos = 4
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise GGUFError(f"{path.name}: GGUF version {version} is not supported")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        scan = _Scan()
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            kind = gguf.GGUFValueType(cur.unpack("<I"))
            metadata[key] = cur.value(kind, full=full, key=key, out=scan)
        parameters = 0
        for _ in range(n_tensors):
            cur.string()
            dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
            cur.pos += 4 + 8  # type, offset
            parameters += int(np.prod(dims, dtype=np.int64))
        alignment = int(metadata.get("general.alignment", 32))
        header_bytes = -(-cur.pos // alignment) * alignment
    special = {
        int(v): scan.tokens[v]
        for k, v in metadata.items()
        if k.endswith("_token_id")
        and isinstance(v, int)
        and scan.tokens
        and 0 <= v < len(scan.tokens)
    }
    return Header(metadata, parameters, _fim_tokens(metadata, scan.tokens), header_bytes, special)


def _fim_tokens(metadata: dict[str, Any], tokens: list[str] | None) -> tuple[int, int, int] | None:
    found: list[int] = []
    index = {text: i for i, text in enumerate(tokens)} if tokens else {}
    for keys, texts in zip(_FIM_KEYS, FIM_TEXTS, strict=True):
        ids = [metadata[k] for k in keys if isinstance(metadata.get(k), int)]
        ids += [index[t] for t in texts if t in index]
        if not ids:
            return None
        found.append(int(ids[0]))
    return found[0], found[1], found[2]


def fingerprint(path: Path, header_bytes: int) -> str:
    """A 64-hex digest of the file's description and size, without hashing gigabytes.

    Ollama's digest is that of a manifest, not of the weights either; two files with the
    same metadata, tensor layout, size and last MiB are taken to be the same model.
    """
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as file:
        digest.update(file.read(header_bytes))
        file.seek(max(header_bytes, size - (1 << 20)))
        digest.update(file.read())
    digest.update(str(size).encode())
    return digest.hexdigest()
