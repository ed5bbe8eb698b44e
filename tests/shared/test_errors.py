from __future__ import annotations

import pytest

from shared.errors import (
    STATUS,
    ErrorType,
    HerdError,
    InvalidRequest,
    ModelNotFound,
    QueueTimeout,
    Unavailable,
    from_type,
)


def test_every_error_type_has_a_status() -> None:
    assert set(STATUS) == set(ErrorType)


@pytest.mark.parametrize(
    ("cls", "status"),
    [(InvalidRequest, 400), (ModelNotFound, 404), (Unavailable, 503), (QueueTimeout, 503)],
)
def test_status_of_each_class(cls: type[HerdError], status: int) -> None:
    assert cls("x").status == status


def test_error_rebuilt_from_its_type_keeps_class_and_message() -> None:
    error = from_type(ErrorType.MODEL_NOT_FOUND, "model 'x' not found")
    assert isinstance(error, ModelNotFound)
    assert error.message == "model 'x' not found"


def test_model_not_found_uses_ollamas_text() -> None:
    assert ModelNotFound.named("Llama3").message == "model 'Llama3' not found"
