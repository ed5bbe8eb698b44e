"""The one ``think`` rule: asked for (absent is no) and enabled (absent is yes)."""

from __future__ import annotations

from shared import thinking


def test_thinking_is_requested_by_true_or_a_level() -> None:
    values = (None, False, True, "low")
    assert [thinking.requested(v) for v in values] == [False, False, True, True]


def test_a_thinking_model_thinks_unless_told_not_to() -> None:
    values = (None, False, True, "high")
    assert [thinking.enabled(v, capable=True) for v in values] == [True, False, True, True]
    assert not any(thinking.enabled(v, capable=False) for v in values)


def test_levels_are_ollamas() -> None:
    assert thinking.LEVELS == ("high", "medium", "low", "max")
