"""A small, deterministic JSON value valid for a JSON schema (FakeEngine's tool arguments
and structured outputs).

It covers what Ollama's tool schemas and Pydantic's ``model_json_schema()`` produce: types
(also as a list), ``enum``/``const``, ``properties``/``required``, ``items``/``prefixItems``,
``anyOf``/``oneOf``/``allOf``, ``$ref`` into ``$defs``/``definitions`` and numeric/length
bounds. Only the required properties are filled (all of them when ``required`` is absent).
"""

from __future__ import annotations

from typing import Any

#: What a string without an enum becomes (tests of weather tools read naturally).
STRING = "Paris"
_MAX_DEPTH = 12


def example(schema: Any) -> Any:
    """A value valid for ``schema`` (a JSON-schema dict; anything else gives ``{}``)."""
    if not isinstance(schema, dict):
        return {}
    return _value(schema, schema, 0)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        node = (
            node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        )
    return node if isinstance(node, dict) else {}


def _value(schema: dict[str, Any], root: dict[str, Any], depth: int) -> Any:
    schema = _resolve(schema, root)
    if depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            usable = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            return _value(usable[0] if usable else options[0], root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(part, root) if isinstance(part, dict) else {}
            for name, value in part.items():
                if isinstance(value, dict) and isinstance(merged.get(name), dict):
                    merged[name] = {**merged[name], **value}
                elif isinstance(value, list) and isinstance(merged.get(name), list):
                    merged[name] = [*merged[name], *value]
                else:
                    merged.setdefault(name, value)
        return _value(merged, root, depth + 1)
    kind = _type(schema)
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        return int(_clamp(1, schema))
    if kind == "number":
        return _clamp(1.5, schema)
    if kind == "boolean":
        return True
    return None


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if kinds else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _object(schema: dict[str, Any], root: dict[str, Any], depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    names = (
        [n for n in properties if n in required] if isinstance(required, list) else list(properties)
    )
    return {
        name: _value(
            properties[name] if isinstance(properties[name], dict) else {}, root, depth + 1
        )
        for name in names
    }


def _array(schema: dict[str, Any], root: dict[str, Any], depth: int) -> list[Any]:
    prefix = schema.get("prefixItems")
    items: list[Any] = []
    if isinstance(prefix, list):
        items = [_value(p if isinstance(p, dict) else {}, root, depth + 1) for p in prefix]
    item_schema = schema.get("items")
    wanted = max(1, int(schema.get("minItems", 1)))
    if isinstance(item_schema, dict):
        while len(items) < wanted:
            items.append(_value(item_schema, root, depth + 1))
    maximum = schema.get("maxItems")
    return items[:maximum] if isinstance(maximum, int) else items


def _string(schema: dict[str, Any]) -> str:
    text = STRING
    shortest, longest = schema.get("minLength"), schema.get("maxLength")
    if isinstance(shortest, int) and len(text) < shortest:
        text += "s" * (shortest - len(text))
    if isinstance(longest, int):
        text = text[:longest]
    return text


def _clamp(value: float, schema: dict[str, Any]) -> float:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = schema["exclusiveMinimum"] + 1
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        high = schema["exclusiveMaximum"] - 1
    if isinstance(low, int | float) and value < low:
        value = float(low)
    if isinstance(high, int | float) and value > high:
        value = float(high)
    return value
