"""The request fields Ollama checks with its own texts: options, think, format,
keep_alive and base64 images."""

from __future__ import annotations

import base64

import pytest

from api import fields
from shared import thinking
from shared.errors import InvalidRequest
from shared.messages import GenerateJob


def test_options_are_split_by_when_they_apply() -> None:
    sampling, load = fields.parse_options(
        {
            "temperature": 0,
            "top_k": 5.9,
            "stop": ["\n", "###"],
            "num_predict": 3,
            "seed": -1,
            "min_p": 0.05,
            "typical_p": 1,
            "repeat_last_n": 64,
            "repeat_penalty": 1.1,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "num_keep": 4,
            "num_ctx": 2048.0,
            "num_batch": 256,
            "num_gpu": -1,
            "main_gpu": 0,
            "use_mmap": True,
            "num_thread": 2,
            "draft_num_predict": 4,
        }
    )
    assert sampling.model_dump(exclude_none=True) == {
        "temperature": 0.0,
        "top_k": 5,  # Go truncates a float given for an integer
        "stop": ["\n", "###"],
        "num_predict": 3,
        "seed": -1,
        "min_p": 0.05,
        "typical_p": 1.0,
        "repeat_last_n": 64,
        "repeat_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "num_keep": 4,
    }
    assert isinstance(sampling.top_k, int)
    assert load.model_dump(exclude_none=True) == {
        "num_ctx": 2048,
        "num_batch": 256,
        "num_gpu": -1,
        "main_gpu": 0,
        "use_mmap": True,
        "num_thread": 2,
    }


def test_unknown_legacy_and_null_options_are_ignored() -> None:
    sampling, load = fields.parse_options(
        {
            "numa": "not even a bool",
            "mirostat": "x",
            "tfs_z": [],
            "penalize_newline": 1,
            "low_vram": None,
            "temperature": None,
            "nonsense": {"a": 1},
        }
    )
    assert sampling.model_dump(exclude_none=True) == {}
    assert load.model_dump(exclude_none=True) == {}
    assert fields.parse_options(None)[0].model_dump(exclude_none=True) == {}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"top_p": True}, 'option "top_p" must be of type float32'),
        ({"top_k": True}, 'option "top_k" must be of type integer'),
        ({"seed": "1"}, 'option "seed" must be of type integer'),
        ({"num_ctx": [1]}, 'option "num_ctx" must be of type integer'),
        ({"main_gpu": 0.5, "use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": "x"}, 'option "stop" must be of type array'),
        ({"stop": ["x", 1]}, 'option "stop" must be of an array of strings'),
        ({"draft_num_predict": "4"}, 'option "draft_num_predict" must be of type integer'),
    ],
)
def test_mistyped_options_get_ollamas_texts(given: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        fields.parse_options(given)
    assert info.value.message == message
    assert info.value.status == 400  # Ollama: 500 (see the module's docstring)


@pytest.mark.parametrize("value", [None, True, False, "low", "medium", "high", "max"])
def test_think_accepts_booleans_and_levels(value: bool | str | None) -> None:
    assert fields.parse_think(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("HIGH", 'invalid think value: "HIGH"'),
        ("", 'invalid think value: ""'),
        (1, "think must be a boolean or string"),
        ({}, "think must be a boolean or string"),
    ],
)
def test_think_rejects_other_values(value: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        fields.parse_think(value)
    assert info.value.message.startswith(message)
    assert info.value.message.endswith('"high", "medium", "low", "max", true, or false)')


def test_thinking_is_asked_for_by_true_or_a_level() -> None:
    assert [thinking.requested(v) for v in (None, False, True, "low")] == [False, False, True, True]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("json", "json"), ({"type": "object"}, {"type": "object"})],
)
def test_format_json_or_schema_or_nothing(value: object, expected: object) -> None:
    assert fields.parse_format(value) == expected


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("xml", '"\\"xml\\""'),
        ("x", '"\\"x\\""'),
        ("JSON", '"\\"JSON\\""'),
        (5, '"5"'),
        (0, '"0"'),
        ([1], '"[1]"'),
        ([], '"[]"'),
        (True, '"true"'),
        (False, '"false"'),
    ],
)
def test_other_formats_are_a_400_in_the_runners_words(value: object, quoted: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        fields.parse_format(value)
    assert info.value.message == (
        f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'
    )
    assert info.value.status == 400  # Ollama: 500 (see the module's docstring)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "string"}, "minItems": 10**9},
        {"type": "object", "properties": {"a": {"type": "string", "maxLength": 2001}}},
        {"anyOf": [{"type": "array", "maxItems": 1e300}]},
        {"type": "string", "pattern": "^a{1,99999}$"},
        {"type": "string", "pattern": "a{" + "9" * 5000 + "}"},
    ],
)
def test_a_schema_asking_for_too_many_repetitions_is_a_400(schema: dict[str, object]) -> None:
    # llama-cpp-python's converter writes each repetition out: this would build gigabytes
    with pytest.raises(InvalidRequest, match="2000 repetitions a grammar allows"):
        fields.parse_format(schema)


def test_a_schema_within_the_repetition_limit_passes() -> None:
    schema = {"type": "array", "maxItems": 2000, "items": {"type": "string", "pattern": "x{2,9}"}}
    assert fields.parse_format(schema) == schema


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (0, 0), ("0", 0), (30, 30), (0.5, 0.5), ("1h30m", 5400), ("300ms", 0.3)],
)
def test_keep_alive_in_seconds(value: object, seconds: float | None) -> None:
    assert fields.keep_alive(value) == seconds


@pytest.mark.parametrize("value", [-1, -0.5, "-1m"])
def test_negative_keep_alive_is_forever_as_minus_one(value: object) -> None:
    assert fields.keep_alive(value) == -1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("soon", 'time: invalid duration "soon"'),
        (True, "Unsupported type: 'bool'"),
        ({"s": 1}, "Unsupported type: 'map[string]interface {}'"),
    ],
)
def test_bad_keep_alive(value: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        fields.keep_alive(value)
    assert info.value.message == message


@pytest.mark.parametrize(
    ("text", "at"),
    [
        (base64.b64encode(b"hello").decode(), None),
        (base64.b64encode(b"hell").decode(), None),
        ("aGVs\r\nbG8=", None),
        ("", None),
        ("aGVsbG8", 4),  # missing padding: Go reports the start of the short quantum
        ("data:image/png;base64,AAAA", 4),
        ("a", 0),
        ("a===", 1),
        ("ab=", 3),
        ("abc=x", 4),
        ("ab=c", 2),  # the "=" that lacks its partner
        ("ab c", 2),
    ],
)
def test_base64_errors_where_go_reports_them(text: str, at: int | None) -> None:
    assert fields.base64_error_at(text) == at


def test_images_must_decode() -> None:
    good = base64.b64encode(b"\x00\xff image").decode()
    assert fields.check_images([good]) == [good]
    assert fields.check_images([]) is None
    with pytest.raises(InvalidRequest, match=r"^illegal base64 data at input byte 2$"):
        fields.check_images([good, "ab=c"])


def test_huge_integer_options_are_clamped_not_a_crash() -> None:
    sampling, load = fields.parse_options(
        {"num_predict": 1e300, "seed": 123456789012345678901234567890, "num_ctx": -1e30}
    )
    assert sampling.num_predict == fields.INT32_MAX
    assert sampling.seed == fields.INT32_MAX
    assert load.num_ctx == fields.INT32_MIN
    # and the job built from them still serialises
    job = GenerateJob(
        request_id="r",
        model="m",
        kind="generate",
        options=sampling,
        load=load,
        enqueued_at_ms=0,
        deadline_ms=0,
    )
    assert GenerateJob.from_fields({b"job": job.to_fields()["job"]}).options == sampling
