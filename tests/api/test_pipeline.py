"""The API reads as a pipeline: no step imports a step that runs after it, and the
helpers a step uses import no step at all. Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[2] / "api"

#: A request's steps, in the order they run (``control`` replaces ``dispatch`` for a load
#: or unload; ``routes`` drive the rest).
STEPS = ["requests", "dispatch", "control", "responses", "routes"]
#: What steps use and may import, which must import no step.
HELPERS = [
    "bodies",
    "fields",
    "gofmt",
    "registry",
    "aliases",
    "offload",
    "errors",
    "cache",
    "tokens",
]


def _api_imports(module: str) -> set[str]:
    """The ``api`` modules (first component below ``api``) that ``module`` imports."""
    path = API / module
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    found: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] != "api":
                    continue
                if len(parts) > 1:
                    found.add(parts[1])
                else:  # from api import x, y
                    found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(
                    alias.name.split(".")[1]
                    for alias in node.names
                    if alias.name.startswith("api.")
                )
    return found - {module}


@pytest.mark.parametrize("step", STEPS)
def test_no_step_imports_a_later_one(step: str) -> None:
    later = set(STEPS[STEPS.index(step) + 1 :])
    assert _api_imports(step) & later == set()


@pytest.mark.parametrize("helper", HELPERS)
def test_helpers_import_no_step(helper: str) -> None:
    assert _api_imports(helper) & set(STEPS) == set()


@pytest.mark.parametrize("module", ["bodies", "requests"])
def test_checking_a_request_does_no_io(module: str) -> None:
    # reading the body and the checks are pure: no client library, no coroutine
    tree = ast.parse((API / f"{module}.py").read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {str(m).split(".")[0] for m in modules} & {"redis", "starlette", "fastapi"} == set()
    assert not any(isinstance(node, ast.AsyncFunctionDef) for node in ast.walk(tree))


def test_the_checks_import_only_pure_helpers() -> None:
    assert _api_imports("requests") <= {"fields", "gofmt", "bodies"}
