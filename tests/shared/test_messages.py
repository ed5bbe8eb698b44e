from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.errors import ErrorType
from shared.messages import (
    DoneEvent,
    ErrorEvent,
    GenerateJob,
    SamplingOptions,
    StartedEvent,
    TokenEvent,
    decode_event,
    encode_event,
)


def _job() -> GenerateJob:
    return GenerateJob(
        request_id="r1",
        model="gemma3:270m",
        kind="generate",
        prompt="hi",
        options=SamplingOptions(temperature=0.1, stop=["x"]),
        enqueued_at_ms=1,
        deadline_ms=2,
    )


def test_job_round_trips_through_stream_fields() -> None:
    job = _job()
    fields = {key.encode(): value for key, value in job.to_fields().items()}
    assert GenerateJob.from_fields(fields) == job


def test_job_rejects_another_wire_version() -> None:
    fields = _job().to_fields()
    tampered = fields["job"].replace(b'"v":1', b'"v":2')
    with pytest.raises(ValidationError):
        GenerateJob.from_fields({b"job": tampered})


@pytest.mark.parametrize(
    "event",
    [
        StartedEvent(request_id="r", seq=0, worker_id="w"),
        TokenEvent(request_id="r", seq=1, attempt=2, text="héllo"),
        DoneEvent(
            request_id="r",
            seq=2,
            done_reason="length",
            n_prompt_tokens=3,
            n_decoded=4,
            prompt_eval_ns=5,
            eval_ns=6,
            context=[1, 2],
        ),
        ErrorEvent(request_id="r", seq=3, error_type=ErrorType.UNAVAILABLE, message="gone"),
    ],
)
def test_events_round_trip_by_discriminator(
    event: StartedEvent | TokenEvent | DoneEvent | ErrorEvent,
) -> None:
    decoded = decode_event(encode_event(event))
    assert type(decoded) is type(event)
    assert decoded == event


def test_unknown_event_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        decode_event(b'{"type":"bogus","request_id":"r","seq":0}')
