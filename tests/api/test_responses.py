from __future__ import annotations

import re
from datetime import UTC, datetime

from api import bodies, requests, responses
from shared.messages import DoneEvent


def test_timestamp_is_rfc3339_utc_with_trimmed_fraction() -> None:
    assert responses.timestamp(datetime(2025, 5, 1, 8, 6, 48, 639710, UTC)) == (
        "2025-05-01T08:06:48.63971Z"
    )
    assert responses.timestamp(datetime(2025, 5, 1, 8, 6, 48, 0, UTC)) == "2025-05-01T08:06:48Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", responses.timestamp())


def test_the_current_timestamp_is_now() -> None:
    """The fast path for the current time (its second cached) tells the same time."""
    for _ in range(3):
        before = datetime.now(UTC)
        now = datetime.fromisoformat(responses.timestamp())
        after = datetime.now(UTC)
        assert before <= now <= after


def test_metrics_leave_out_zero_values() -> None:
    done = DoneEvent(
        request_id="r",
        seq=3,
        done_reason="stop",
        n_prompt_tokens=7,
        n_decoded=0,
        prompt_eval_ns=10,
        eval_ns=0,
    )
    assert responses.metrics(done, total_ns=100, load_ns=0) == {
        "total_duration": 100,
        "prompt_eval_count": 7,
        "prompt_eval_duration": 10,
    }


def test_chat_and_generate_chunks_have_ollamas_shape() -> None:
    chat = responses.chat_chunk("m", "hi")
    assert chat["message"] == {"role": "assistant", "content": "hi"}
    assert chat["done"] is False
    generate = responses.generate_chunk("m", "hi")
    assert generate["response"] == "hi" and "message" not in generate


def test_control_response_for_load_and_unload() -> None:
    assert responses.control_response("m", chat=True, reason="load")["message"]["content"] == ""
    body = responses.control_response("m", chat=False, reason="unload")
    assert body["done"] is True and body["done_reason"] == "unload" and body["response"] == ""


def test_stream_defaults_to_true_when_absent() -> None:
    assert bodies.ChatRequest(model="m").streaming is True
    assert bodies.ChatRequest(model="m", stream=False).streaming is False


def test_load_and_unload_answer_in_their_routes_shape() -> None:
    job = requests.job(model="m:latest", kind="load")
    assert responses.control_answer(requests.Load(route="embed", model="M", job=job)) == {
        "model": "M",
        "embeddings": [],
    }
    legacy = requests.Load(route="embeddings", model="M", job=job)
    assert responses.control_answer(legacy) == {"embedding": []}
    unload = responses.control_answer(requests.Unload(route="chat", model="M", name="m:latest"))
    assert (unload["model"], unload["message"]["content"], unload["done_reason"]) == (
        "M",
        "",
        "unload",
    )
    load = responses.control_answer(requests.Load(route="generate", model="M", job=job))
    assert (load["response"], load["done_reason"]) == ("", "load")
