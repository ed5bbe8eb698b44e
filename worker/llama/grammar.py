"""``format`` → a GBNF grammar that constrains sampling (structured outputs).

``"json"`` is llama.cpp's generic JSON grammar (an object at the root, as Ollama's); a
JSON-schema object goes through llama-cpp-python's schema converter, which keeps the
schema's property order. Converting is pure Python and costs milliseconds to seconds for
big schemas, so grammars are cached per schema text.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import structlog
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from shared.errors import InvalidRequest

log = structlog.get_logger()

#: llama.cpp refused a schema's grammar: its limit on repetitions counts each repeated
#: item's rules too, so a schema within ``api.fields.MAX_REPETITIONS`` may still pass it.
GRAMMAR_REFUSED = (
    "invalid format: llama.cpp refuses the grammar of this schema "
    "(fewer or shorter repetitions: maxLength, maxItems, nested arrays)"
)


def grammar_for(fmt: str | dict[str, Any] | None) -> str | None:
    """The GBNF text for a request's ``format``, or None when output is free."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return JSON_GBNF
    if isinstance(fmt, dict):
        return _schema_grammar(json.dumps(fmt))
    raise InvalidRequest(f'invalid format: "{fmt}"; expected "json" or a valid JSON Schema object')


@functools.lru_cache(maxsize=128)
def _schema_grammar(schema: str) -> str:
    try:
        return str(json_schema_to_gbnf(schema))
    except Exception as exc:  # the converter raises bare errors on schema features it lacks
        # still JSON, as llama-cpp-python's own chat handler falls back to
        log.warning("json_schema_unsupported", error=str(exc))
        return JSON_GBNF
