"""What a GGUF file says about its model: metadata, size, digest and Ollama's capabilities.

``gguf.GGUFReader`` builds a numpy view per array element, which takes over 10 s for a
262k-token vocabulary (gemma3); this reads the same key-value section with ``struct`` in a
fraction of a second, using the ``gguf`` package's type codes. Only the header is read:
never the weights.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from shared.messages import ModelAdvert
from worker.catalog import ModelSpec
from worker.templates import BUILTIN, ChatTemplate, GoTemplate, JinjaTemplate

#: Keys Ollama leaves out of /api/show's ``model_info``.
HIDDEN_KEYS = frozenset({"general.name", "tokenizer.chat_template"})
#: Arrays longer than this are shown as ``[]`` unless verbose (Ollama's rule).
SHORT_ARRAY = 5

_SCALARS: dict[gguf.GGUFValueType, str] = {
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
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
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


def human_number(count: int) -> str:
    """Ollama's ``format.HumanNumber``: 268098176 → ``268.10M``, 8e9 → ``8B``."""
    for unit, scale, decimals in (("B", 1e9, 1), ("M", 1e6, 2)):
        if count >= scale:
            number = count / scale
            return (
                f"{number:.0f}{unit}" if number == int(number) else f"{number:.{decimals}f}{unit}"
            )
    if count >= 1000:
        return f"{count / 1000:.0f}K"
    return str(count)


def quantization(metadata: dict[str, Any]) -> str:
    file_type = metadata.get("general.file_type")
    if not isinstance(file_type, int):
        return "unknown"
    try:
        return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except ValueError:
        return "unknown"


def model_info(header: Header) -> dict[str, Any]:
    """/api/show's ``model_info``: every key but the name and chat template, plus the count."""
    info = {k: v for k, v in header.metadata.items() if k not in HIDDEN_KEYS}
    info["general.parameter_count"] = header.parameter_count
    return dict(sorted(info.items()))


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def capabilities(header: Header, template: list[str]) -> list[str]:
    """Ollama's capability names, computed as ``server/images.go`` does for a GGUF:
    ``template`` holds what the chat template handles (``tools``, ``thinking``)."""
    arch = header.metadata.get("general.architecture", "")
    if f"{arch}.pooling_type" in header.metadata:
        return ["embedding", *template]
    found = ["completion", *template]
    if header.fim_tokens is not None:
        found.append("insert")
    return found


@dataclass(frozen=True)
class Description:
    """A servable model as read from its file, before (and independent of) loading it."""

    spec: ModelSpec
    header: Header
    template: ChatTemplate
    #: Modelfile-style defaults: the request's options override them.
    parameters: dict[str, list[Any]]
    advert: ModelAdvert

    @property
    def arch(self) -> str:
        return str(self.header.metadata.get("general.architecture", ""))

    @property
    def trained_context(self) -> int:
        return int(self.header.metadata.get(f"{self.arch}.context_length", 0) or 0)

    @property
    def embedding_only(self) -> bool:
        return "completion" not in self.advert.capabilities

    def kv_bytes(self, n_ctx: int) -> int:
        """An estimate of the KV cache for ``n_ctx`` tokens (f16, every layer full size)."""
        meta, arch = self.header.metadata, self.arch
        heads = _first_int(meta.get(f"{arch}.attention.head_count"), 1)
        kv_heads = _first_int(meta.get(f"{arch}.attention.head_count_kv"), heads)
        width = int(meta.get(f"{arch}.embedding_length", 0) or 0)
        key = int(meta.get(f"{arch}.attention.key_length", 0) or width // max(heads, 1))
        value = int(meta.get(f"{arch}.attention.value_length", 0) or key)
        layers = int(meta.get(f"{arch}.block_count", 0) or 0)
        return layers * n_ctx * kv_heads * (key + value) * 2


def _first_int(value: Any, default: int) -> int:
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and value > 0 else default


def _template(spec: ModelSpec, header: Header) -> ChatTemplate:
    if spec.chat_format is not None:
        return BUILTIN[spec.chat_format]
    source = header.metadata.get("tokenizer.chat_template")
    if not isinstance(source, str):
        return GoTemplate("{{ .Prompt }}")  # Ollama's template for a model without one
    tokens = header.special_tokens
    bos = header.metadata.get("tokenizer.ggml.bos_token_id")
    eos = header.metadata.get("tokenizer.ggml.eos_token_id")
    return JinjaTemplate(
        source,
        bos_token=tokens.get(bos, "") if isinstance(bos, int) else "",
        eos_token=tokens.get(eos, "") if isinstance(eos, int) else "",
    )


def describe(spec: ModelSpec) -> Description:
    """Read ``spec``'s GGUF header and build what /api/tags and /api/show tell of it."""
    header = read_header(spec.path)
    template = _template(spec, header)
    meta = header.metadata
    arch = str(meta.get("general.architecture", ""))
    parameters = {**({"stop": template.stops} if template.stops else {}), **spec.parameters}
    stat = spec.path.stat()
    advert = ModelAdvert(
        name=spec.name,
        size_bytes=stat.st_size,
        digest=spec.digest or fingerprint(spec.path, header.header_bytes),
        family=arch,
        parameter_size=human_number(header.parameter_count),
        quantization_level=quantization(meta),
        context_length=int(meta.get(f"{arch}.context_length", 0) or 0),
        embedding_length=int(meta.get(f"{arch}.embedding_length", 0) or 0),
        modified_at=rfc3339(stat.st_mtime),
        capabilities=capabilities(header, template.capabilities),
        template=template.source,
        parameters=parameters,
        license=_license(meta.get("general.license")),
        model_info=model_info(header),
    )
    return Description(spec, header, template, parameters, advert)


def _license(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value) if value else ""
