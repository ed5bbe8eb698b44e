"""What ``/api/create`` needs from an uploaded GGUF: that it is one, and the few header keys
its config blob reports (family, file type, parameter count).

The worker's ``worker.gguf_header`` reads everything, with ``gguf`` and numpy (the worker's
dependencies); the API has neither and needs three keys, so this walks the header with
``struct`` and skips every value it does not keep.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"

#: GGUF value types (``gguf.GGUFValueType``) and their sizes; 8 (string) and 9 (array) vary.
_STRING, _ARRAY = 8, 9
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_INTEGERS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}

#: ``general.file_type`` → Ollama's name (llama.cpp's ``LLAMA_FTYPE_MOSTLY_*`` less the prefix).
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}


class NotGGUF(ValueError):
    """The file is not a GGUF (or not one whose header can be read)."""


@dataclass(frozen=True)
class Details:
    family: str
    file_type: str
    parameter_count: int


def is_gguf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == MAGIC


class _Reader:
    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.size = handle, size

    def unpack(self, fmt: str) -> int:
        raw = self.handle.read(struct.calcsize(fmt))
        if len(raw) != struct.calcsize(fmt):
            raise NotGGUF("the GGUF header ends early")
        value: int = struct.unpack(fmt, raw)[0]
        return value

    def skip(self, count: int) -> None:
        if self.handle.seek(count, 1) > self.size:
            raise NotGGUF("the GGUF header ends early")

    def string(self) -> str:
        length = self.unpack("<Q")
        if length > self.size:
            raise NotGGUF("the GGUF header is corrupt")
        return self.handle.read(length).decode("utf-8", errors="replace")

    def skip_value(self, kind: int) -> None:
        if kind == _STRING:
            self.skip(self.unpack("<Q"))
        elif kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SIZES:
                self.skip(_SIZES[item] * count)
            else:
                for _ in range(count):  # strings (a vocabulary) or nested arrays
                    self.skip_value(item)
        elif kind in _SIZES:
            self.skip(_SIZES[kind])
        else:
            raise NotGGUF(f"unknown GGUF value type {kind}")


def read_details(path: Path) -> Details:
    """The architecture, file type and parameter count of a GGUF (v2 or v3)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        if handle.read(4) != MAGIC:
            raise NotGGUF("supplied file was not in GGUF format")
        reader = _Reader(handle, size)
        if (version := reader.unpack("<I")) not in (2, 3):
            raise NotGGUF(f"GGUF version {version} is not supported")
        n_tensors, n_kv = reader.unpack("<Q"), reader.unpack("<Q")
        family, file_type, parameters = "", -1, -1
        for _ in range(n_kv):
            key, kind = reader.string(), reader.unpack("<I")
            if key == "general.architecture" and kind == _STRING:
                family = reader.string()
            elif key in ("general.file_type", "general.parameter_count") and kind in _INTEGERS:
                value = reader.unpack(_INTEGERS[kind])
                if key == "general.file_type":
                    file_type = value
                else:
                    parameters = value
            else:
                reader.skip_value(kind)
        if parameters < 0:  # not recorded: the tensors' element counts, as Ollama sums them
            parameters = 0
            for _ in range(n_tensors):
                reader.skip(reader.unpack("<Q"))
                count = 1
                for _ in range(reader.unpack("<I")):
                    count *= reader.unpack("<Q")
                parameters += count
                reader.skip(4 + 8)  # type, offset
    return Details(family, FILE_TYPES.get(file_type, "unknown"), parameters)


def human_number(count: int) -> str:
    """Ollama's ``format.HumanNumber`` (``268.10M``, ``8B``), as ``/api/tags`` shows sizes."""
    for unit, scale, decimals in (("B", 1e9, 1), ("M", 1e6, 2)):
        if count >= scale:
            number = count / scale
            whole = number == int(number)
            return f"{number:.0f}{unit}" if whole else f"{number:.{decimals}f}{unit}"
    if count >= 1000:
        return f"{count / 1000:.0f}K"
    return str(count)
