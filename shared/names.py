"""Model names as Ollama parses them (``types/model/name.go``).

A name is ``[scheme://][host/][namespace/]model[:tag]`` with the defaults
``registry.ollama.ai``, ``library`` and ``latest``. Herd matches names case-insensitively
(Ollama folds them to the installed casing), so the normal form is lower-case, in Ollama's
shortest display form: ``gemma3:latest``, ``ns/model:tag``, ``hf.co/user/repo:q4_k_m``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from shared.errors import InvalidRequest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
INVALID = "invalid model name"

_FIRST = frozenset(string.ascii_letters + string.digits + "_")
_REST = _FIRST | {"-"}


@dataclass(frozen=True)
class Name:
    host: str
    namespace: str
    model: str
    tag: str

    def full(self) -> str:
        """The fully qualified form (``registry.ollama.ai/library/gemma3:latest``)."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def display(self) -> str:
        """``DisplayShortest``: the default host and namespace are left out; the tag never."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


def _cut_last(text: str, sep: str) -> tuple[str, str] | None:
    before, found, after = text.rpartition(sep)
    return (before, after) if found else None


def _valid(part: str, *, kind: str) -> bool:
    limit = 350 if kind == "host" else 80
    if not 1 <= len(part) <= limit or part[0] not in _FIRST:
        return False
    extra = {"."} if kind != "namespace" else set()
    if kind == "host":
        extra.add(":")
    return all(ch in _REST or ch in extra for ch in part[1:])


def parse(name: str) -> Name:
    """Split and validate like ``model.ParseName``; raises ``InvalidRequest`` when invalid."""
    rest, tag = name, DEFAULT_TAG
    # "/" cannot appear in a tag, so a ":" after the last "/" starts the tag
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, tag = rest.rpartition(":")
        if not rest:
            raise InvalidRequest(INVALID)
    host, namespace, model = DEFAULT_HOST, DEFAULT_NAMESPACE, rest
    cut = _cut_last(rest, "/")
    if cut is not None:
        rest, model = cut
        cut = _cut_last(rest, "/")
        if cut is None:
            namespace = rest
        else:
            host, namespace = cut
            scheme_cut = host.split("://", 1)
            host = scheme_cut[-1]
    parts = {"host": host, "namespace": namespace, "model": model, "tag": tag}
    if not all(_valid(value, kind=kind) for kind, value in parts.items()):
        raise InvalidRequest(INVALID)
    return Name(host.lower(), namespace.lower(), model.lower(), tag.lower())


def normalize(name: str) -> str:
    """The one spelling Herd keys a model by; raises for a name Ollama would refuse."""
    return parse(name).display()
