"""The contract tier: ollama-api.md's route table (§2) and error catalogue (§3.7, §4.3, §5,
§6, §9.1, §12 items 5 and 6), from the tables in ``expectations.py``, walked against a
running Herd (real processes), plus §1's CORS, Host guard and body limit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients.cluster import MAX_BODY_BYTES, PLAIN_MODEL, TOOLS_MODEL
from tests.contract.expectations import (
    NATIVE,
    OPENAI,
    OPENAI_TYPES,
    PATH_PARAMS,
    SERVED,
    UNSERVED,
    WRONG_METHOD,
    Case,
    Served,
    chat,
    gen,
)


@pytest.fixture(scope="module")
def http(herd_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=herd_url, timeout=15) as client:
        yield client


def _send(http: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    if body is None:
        return http.request(method, path)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.request(method, path, content=content, headers={"Content-Type": "application/json"})


# --- the route walk ----------------------------------------------------------------------------


def _split(route: str) -> tuple[str, str]:
    method, path = route.split(" ")
    for param, value in PATH_PARAMS.items():
        path = path.replace(param, value)
    return method, path


@pytest.mark.parametrize("route", SERVED, ids=lambda r: r.route)
def test_served_route_answers(http: httpx.Client, route: Served) -> None:
    body = route.body
    cleanup: str | None = None
    if route.path == "/api/copy":
        cleanup = f"contract-copy-{uuid.uuid4().hex[:8]}"
        body = {**body, "destination": cleanup}
    elif route.path == "/api/delete":
        name = f"contract-delete-{uuid.uuid4().hex[:8]}"
        made = _send(http, "POST", "/api/copy", {"source": TOOLS_MODEL, "destination": name})
        assert made.status_code == 200, made.text
        body = {"model": name}
    try:
        response = _send(http, route.method, route.path, body)
    finally:
        if cleanup is not None:
            _send(http, "DELETE", "/api/delete", {"model": cleanup})
    assert response.status_code == 200, response.text
    content_type = response.headers.get("content-type", "")
    if route.framing == "json":
        assert content_type.startswith("application/json"), content_type
        assert route.keys <= set(response.json()), response.json()
    elif route.framing == "ndjson":
        assert content_type.startswith("application/x-ndjson"), content_type
        lines = response.text.split("\n")
        assert lines[-1] == "", "every NDJSON line ends with exactly one newline"
        chunks = [json.loads(line) for line in lines[:-1]]  # no blank lines in between
        assert chunks[-1]["done"] is True and not any(c["done"] for c in chunks[:-1])
    elif route.framing == "text":
        assert content_type.startswith("text/plain") and response.text == "Ollama is running"
    else:
        assert response.content == b""


@pytest.fixture(scope="module")
def unserved_answers(http: httpx.Client) -> dict[str, httpx.Response]:
    answers = {}
    for route in UNSERVED:
        method, path = _split(route)
        body = None if method in ("GET", "HEAD") else {"model": TOOLS_MODEL}
        answers[route] = _send(http, method, path, body)
    return answers


@pytest.mark.parametrize("route", list(UNSERVED))
def test_unserved_route_is_refused_like_the_rest(
    unserved_answers: dict[str, httpx.Response], route: str
) -> None:
    statuses = {r.status_code for r in unserved_answers.values()}
    assert len(statuses) == 1, {r: a.status_code for r, a in unserved_answers.items()}
    response = unserved_answers[route]
    assert response.status_code in (404, 501)
    if route.startswith("HEAD "):
        return
    if response.status_code == 404:  # the same answer as any unknown route
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text == "404 page not found"
    else:
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert error if isinstance(error, str) else error["message"]


def test_unknown_route_is_gin_404(http: httpx.Client) -> None:
    response = http.get("/api/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "404 page not found"


@pytest.mark.parametrize("route", WRONG_METHOD)
def test_wrong_method_is_405_plain_text(http: httpx.Client, route: str) -> None:
    method, path = _split(route)
    response = _send(http, method, path, None if method == "GET" else {"model": TOOLS_MODEL})
    assert response.status_code == 405, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "405 method not allowed"


# --- the error catalogue -----------------------------------------------------------------------


def _text_matches(case: Case, got: str) -> bool:
    assert case.text is not None
    return got.startswith(case.text) if case.prefix else got == case.text


@pytest.mark.parametrize("case", NATIVE, ids=lambda c: c.id)
def test_native_error_catalogue(http: httpx.Client, case: Case) -> None:
    response = _send(http, case.method, case.path, case.body)
    assert response.status_code == case.status, response.text[:300]
    if case.status == 200:
        return
    # ollama-js reads the JSON `error` only when the content type says JSON
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert isinstance(error, str) and error
    if case.text is not None:
        assert _text_matches(case, error), f"expected {case.text!r}, got {error!r}"


@pytest.mark.parametrize("case", OPENAI, ids=lambda c: c.id)
def test_openai_error_catalogue(http: httpx.Client, case: Case) -> None:
    response = _send(http, case.method, case.path, case.body)
    assert response.status_code == case.status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert error["type"] == OPENAI_TYPES.get(case.status, "api_error"), error
    assert error["param"] is None and error["code"] is None
    assert isinstance(error["message"], str) and error["message"]
    if case.text is not None:
        assert _text_matches(case, error["message"]), (
            f"expected {case.text!r}, got {error['message']!r}"
        )


def test_stream_error_before_first_byte_is_a_status_then_mid_stream_is_a_line(
    http: httpx.Client,
) -> None:
    early = _send(http, "POST", "/api/chat", chat(model="nope", stream=True))
    assert early.status_code == 404 and early.json() == {"error": "model 'nope' not found"}
    late = _send(http, "POST", "/api/generate", gen(prompt="[[fake:fail]]", stream=True))
    assert late.status_code == 200
    last = json.loads(late.text.rstrip("\n").split("\n")[-1])
    assert last == {"error": "fake engine failure"}


@pytest.mark.parametrize(
    ("route", "body", "empty"),
    [
        ("POST /api/generate", {"model": PLAIN_MODEL}, {"response": ""}),
        (
            "POST /api/chat",
            {"model": PLAIN_MODEL},
            {"message": {"role": "assistant", "content": ""}},
        ),
    ],
)
def test_load_then_unload_answer_one_json_object_each(
    http: httpx.Client, route: str, body: dict[str, Any], empty: dict[str, Any]
) -> None:
    """§3.4: an empty prompt (or no messages) loads, with keep_alive 0 unloads; streaming is
    the default, yet the answer is one JSON object."""
    method, path = _split(route)
    for extra, reason in (({}, "load"), ({"keep_alive": 0}, "unload")):
        response = _send(http, method, path, {**body, **extra})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        answer = response.json()
        assert answer.pop("created_at").endswith("Z")
        assert answer == {"model": PLAIN_MODEL, **empty, "done": True, "done_reason": reason}


# --- §1: CORS, the Host guard, the body limit --------------------------------------------------


def test_cors_preflight_from_a_local_origin(http: httpx.Client) -> None:
    origin = "http://localhost:5173"
    response = http.options(
        "/api/chat",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization, x-stainless-os",
        },
    )
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == origin
    allowed = response.headers.get("access-control-allow-headers", "").lower()
    for header in ("content-type", "authorization", "x-stainless-os"):
        assert header in allowed or allowed == "*"


def test_cors_other_origins_get_no_allow_origin(http: httpx.Client) -> None:
    response = http.get("/api/version", headers={"Origin": "https://evil.example"})
    assert response.headers.get("access-control-allow-origin") != "https://evil.example"


@pytest.mark.parametrize("host", ["localhost", "foo.localhost", "box.local", "10.0.0.5"])
def test_host_guard_lets_local_names_in(http: httpx.Client, host: str) -> None:
    assert http.get("/api/version", headers={"Host": host}).status_code == 200


def test_host_guard_refuses_other_hosts_on_loopback(http: httpx.Client) -> None:
    response = http.get("/api/version", headers={"Host": "evil.example"})
    assert response.status_code == 403
    assert response.content == b""


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    body = chat(messages=[{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1)}])
    assert _send(http, "POST", "/api/chat", body).status_code == 413


# --- the compatibility doc shows the same table --------------------------------------------


def test_compatibility_doc_gives_every_unserved_route_and_reason() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "compatibility.md").read_text()
    missing = [
        f"{route}: {reason}"
        for route, reason in UNSERVED.items()
        if route.split(" ")[1] not in doc or reason not in doc
    ]
    assert not missing, "docs/compatibility.md lacks:\n" + "\n".join(missing)
