"""Every value is documented (`## @param` in values.yaml), typed in values.schema.json, and listed
in helm/herd/README.md; none of the three mentions a value the others do not."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from .chart import CHART_DIR

PARAM = re.compile(r"^\s*## @param (\S+) (.+)$")
README_ROW = re.compile(r"^\| `([^`]+)` \| (.+) \| (.+) \|$")


def _params() -> dict[str, str]:
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    return {m[1]: m[2].strip() for m in map(PARAM.match, lines) if m}


def _paths(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    paths = []
    for key, child in node.items():
        path = f"{prefix}.{key}" if prefix else key
        paths += [path, *_paths(child, path)]
    return paths


def _schema_paths(node: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        found[path] = child
        found.update(_schema_paths(child, path))
    return found


PARAMS = _params()
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def _covered(path: str) -> bool:
    """A path is documented itself, under a documented map, or leads to documented values."""
    parts = path.split(".")
    ancestors = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return bool(ancestors & PARAMS.keys()) or any(p.startswith(f"{path}.") for p in PARAMS)


def test_params_are_documented_values() -> None:
    assert len(PARAMS) > 100
    value_paths = set(_paths(VALUES))
    assert sorted(set(PARAMS) - value_paths) == [], "@param for a value that does not exist"
    assert [p for p in _paths(VALUES) if not _covered(p)] == [], "values without @param"


def test_schema_covers_exactly_the_documented_values() -> None:
    schema_paths = _schema_paths(SCHEMA)
    assert sorted(set(PARAMS) - set(schema_paths)) == [], "@param missing from the schema"
    undocumented = [p for p in schema_paths if p != "global" and not _covered(p)]
    assert undocumented == [], "schema properties that values.yaml does not document"
    assert SCHEMA["additionalProperties"] is False


def test_schema_descriptions_are_the_param_descriptions() -> None:
    schema_paths = _schema_paths(SCHEMA)
    differ = [p for p in PARAMS if schema_paths[p].get("description") != PARAMS[p]]
    assert differ == []


def test_readme_lists_every_parameter_once() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    _, _, tables = readme.partition("\n## Parameters\n")
    rows = [m for m in map(README_ROW.match, tables.splitlines()) if m]
    assert sorted(m[1] for m in rows) == sorted(PARAMS), "README out of step with values.yaml"
    differ = [m[1] for m in rows if m[2].replace("\\|", "|") != PARAMS[m[1]]]
    assert differ == []
