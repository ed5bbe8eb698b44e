"""One rule for ``think``, on both sides of the queue.

A request's ``think`` is ``True``/``False``, a level, or absent (``None``). Two questions
are asked of it, and they treat "absent" differently:

- ``requested``: did the client ask for thinking? (``ThinkValue.Bool``: absent is no.) The
  API refuses that on a model without the ``thinking`` capability.
- ``enabled``: is the answer's thinking split out? On a thinking model, yes unless the
  client said ``false`` (Ollama >= 0.12.5 thinks by default).
"""

from __future__ import annotations

#: The levels a string ``think`` may name, in the order Ollama's error text lists them.
LEVELS = ("high", "medium", "low", "max")

Think = bool | str | None


def requested(think: Think) -> bool:
    """Thinking asked for in any way: ``true`` or a level (absent is not asking)."""
    return think is True or isinstance(think, str)


def enabled(think: Think, *, capable: bool) -> bool:
    """Whether a model with (``capable``) or without the capability thinks for ``think``."""
    return capable and think is not False
