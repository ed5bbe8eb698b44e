"""Decision 6: only the ``worker.llama`` package imports llama_cpp."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
IMPORT = re.compile(r"^\s*(import llama_cpp|from llama_cpp)", re.MULTILINE)


def test_only_the_llama_package_imports_llama_cpp() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("api", "shared", "worker")
        for path in (ROOT / package).rglob("*.py")
        if IMPORT.search(path.read_text()) and path.parent != ROOT / "worker" / "llama"
    ]
    assert offenders == []
