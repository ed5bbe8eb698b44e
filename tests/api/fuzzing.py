"""A request fuzzer for a running Herd: Ollama's request bodies (ollama-api.md §3-§9, the
fields of Ollama's docs/openapi.yaml and the client fixtures) and every path of Herd's own
``/openapi.json``, mutated, sent, and every answer checked against the error rule.

A probe starts from a valid body of its route and applies one to three mutations: a field
set to a hostile value (wrong type, out of range, huge, empty, Unicode, nested), a field
dropped or added, an option set, JSON nested past the depth limit, a key given twice, or
the raw bytes corrupted (cut, empty, not an object, not UTF-8). Seeded: a failure names
its seed and probe, and ``probes(seed)`` gives the same ones again.

``check`` holds an answer to what every client relies on: no status of 500 or more, and
a 200 stream that ends with exactly one terminal line (``done: true``, or one error line
last; SSE: ``[DONE]`` or one error event last). ``run`` sends probes concurrently, each
under a timeout (a hang is a failure), until a count or a time budget is spent.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

SERVED = "gemma3:270m"
#: Names the probes copy and delete: never a served model's (one is never hidden).
SPARE = ["fuzz-copy:latest", "fuzz/other:v1", "nothing-here"]
IMAGE = "iVBORw0KGgo="
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
        },
    },
}
SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["n"],
}
OPTIONS = {
    "num_predict": 3,
    "temperature": 0.5,
    "top_k": 40,
    "top_p": 0.9,
    "seed": 1,
    "stop": ["\n\n"],
}
#: Every option Ollama's ``api.Options`` knows, and legacy ones clients still send.
OPTION_KEYS = [
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
    "draft_num_predict", "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p",
    "typical_p", "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty",
    "frequency_penalty", "stop", "numa", "low_vram", "f16_kv", "logits_all", "vocab_only",
    "use_mlock", "embedding_only", "tfs_z", "mirostat", "mirostat_tau", "mirostat_eta",
    "penalize_newline", "unknown_option",
]  # fmt: skip
USER = [{"role": "user", "content": "hi"}]
HISTORY = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "weather?", "images": [IMAGE]},
    {
        "role": "assistant",
        "content": "",
        "thinking": "ask the tool",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
    },
    {"role": "tool", "content": "rain", "tool_name": "get_weather", "tool_call_id": "call_1"},
    {"role": "user", "content": "and tomorrow?"},
]

#: Valid bodies per route (method, path): Ollama's fields, as its clients send them.
SEEDS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("POST", "/api/generate"): [
        {"model": SERVED, "prompt": "hi", "stream": False, "options": OPTIONS},
        {"model": SERVED, "prompt": "hi", "options": OPTIONS, "think": True, "logprobs": True,
         "top_logprobs": 2, "format": SCHEMA, "keep_alive": "5m", "truncate": True},
        {"model": SERVED, "prompt": "def f(", "suffix": "return 1", "system": "code",
         "context": [1, 2, 3], "options": OPTIONS, "stream": False},
        {"model": SERVED, "prompt": "raw", "raw": True, "images": [IMAGE], "format": "json",
         "shift": False, "options": OPTIONS},
        {"model": SERVED, "template": "{{ .Prompt }}", "prompt": "x", "options": OPTIONS},
        {"model": SERVED},
        {"model": SERVED, "keep_alive": 0},
    ],
    ("POST", "/api/chat"): [
        {"model": SERVED, "messages": USER, "tools": [], "stream": False, "options": OPTIONS},
        {"model": SERVED, "messages": HISTORY, "tools": [TOOL], "options": OPTIONS,
         "think": "low", "format": SCHEMA, "logprobs": True, "top_logprobs": 3},
        {"model": SERVED, "messages": USER, "format": "json", "keep_alive": -1,
         "options": OPTIONS, "truncate": False, "shift": True},
        {"model": SERVED, "messages": []},
    ],
    ("POST", "/api/embed"): [
        {"model": SERVED, "input": "hello"},
        {"model": SERVED, "input": ["a", "b"], "truncate": False, "dimensions": 4,
         "options": {"num_ctx": 64}, "keep_alive": "1m"},
    ],
    ("POST", "/api/embeddings"): [{"model": SERVED, "prompt": "hello", "options": {}}],
    ("POST", "/api/show"): [
        {"model": SERVED},
        {"name": SERVED, "verbose": True, "system": "s", "options": {"temperature": 1}},
    ],
    ("POST", "/api/copy"): [{"source": SERVED, "destination": SPARE[0]}],
    ("DELETE", "/api/delete"): [{"model": SPARE[0]}, {"name": SPARE[1]}],
    ("POST", "/api/create"): [{"model": "mine", "from": SERVED, "system": "s", "stream": False}],
    ("POST", "/v1/chat/completions"): [
        {"model": SERVED, "messages": USER, "max_tokens": 3},
        {"model": SERVED, "stream": True, "stream_options": {"include_usage": True},
         "messages": [{"role": "system", "content": "s"},
                      {"role": "user", "content": [
                          {"type": "text", "text": "what is this"},
                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                              + IMAGE}}]}],
         "max_tokens": 3, "temperature": 0.2, "top_p": 0.5, "seed": 3, "stop": ["x"],
         "frequency_penalty": 0.1, "presence_penalty": 0.1, "tools": [TOOL],
         "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
         "reasoning_effort": "low", "logprobs": True, "top_logprobs": 2},
    ],
    ("POST", "/v1/completions"): [
        {"model": SERVED, "prompt": "hi", "max_tokens": 3, "stream": True, "suffix": "s",
         "logprobs": 2, "stop": "x", "echo": False},
    ],
    ("POST", "/v1/embeddings"): [
        {"model": SERVED, "input": ["a", "b"], "encoding_format": "base64", "dimensions": 4},
    ],
    ("POST", "/api/scale"): [{"model": SERVED, "min_replicas": 0, "max_replicas": 2}],
}  # fmt: skip
#: Routes without a body, or whose body is anything (Herd's /openapi.json adds the rest).
BARE = [
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/api/version"),
    ("GET", "/api/tags"),
    ("HEAD", "/api/tags"),
    ("GET", "/api/ps"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model}"),
    ("GET", "/api/cluster"),
    ("HEAD", "/api/blobs/{digest}"),
    ("POST", "/api/blobs/{digest}"),
    ("GET", "/api/nope"),
    ("PUT", "/api/generate"),
]

#: Values no field expects all of: wrong types, edges of int32/int64, huge, empty, odd text.
HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 7, 2**31 - 1, -(2**31), 2**31, 2**63 - 1, -(2**63),
    2**64 - 1, 1e308, -1e308, 0.5, -0.0, 3.7, "", "x", "json", "0", "-1", "5m", "-5m", "1h30m",
    "300", "high", "max", "🦙🦙", "\u0000", "\ud7ff\ue000", "<think>", "a" * 5000,
    "data:image/png;base64,AAAA", "sha256:" + "0" * 64, "../../etc/passwd", "bad name!",
    "hf.co/a/b:Q4", [], [1], [-1], [2**31 - 1], ["x"], [None], [[]], [{}],
    ["a", 1], {}, {"type": "object"}, {"a": []}, {"type": "array", "minItems": 10**9},
    {"type": "string", "pattern": "a{1,99999}"}, {"$ref": "#"}, {"properties": []},
]  # fmt: skip
#: Raw bodies that are not a JSON object, or not JSON.
RAW_BODIES = [
    b"", b" ", b"null", b"[]", b"1", b'"x"', b"true", b"{", b'{"model": ', b"}", b"\xff\xfe",
    b'{"model": "' + SERVED.encode() + b'", "prompt": "\xc3"}', b"NaN", b"1e999",
    b'{"a": 123456789012345678901234567890}', b"{" * 50 + b"}" * 50,
]  # fmt: skip
NEST = "\x00nest\x00"


@dataclass(frozen=True)
class Probe:
    method: str
    path: str
    body: bytes | None
    #: What was done to the seed (a failure report says it).
    mutations: tuple[str, ...]
    seed: int
    index: int

    def __str__(self) -> str:
        shown = b"" if self.body is None else self.body[:300]
        return (
            f"probe {self.seed}/{self.index} {self.method} {self.path} {list(self.mutations)}: "
            f"{shown!r}"
        )


def _nested_json(levels: int) -> bytes:
    return b'{"a": [' * (levels // 2) + b"{}" + b"]}" * (levels // 2)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path of ``value`` (into objects and arrays), shallow ones first."""
    if isinstance(value, dict):
        items: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return
    for key, _ in items:
        yield (*prefix, key)
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _set(body: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        body = body[key]
    body[path[-1]] = value


def _drop(body: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        body = body[key]
    del body[path[-1]]


class _Mutator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def hostile(self) -> Any:
        return copy.deepcopy(self.rng.choice(HOSTILE))

    def mutate(self, body: dict[str, Any], done: list[str]) -> bytes | None:
        """One mutation of ``body`` in place; bytes when it can only be written as text."""
        rng = self.rng
        paths = list(_paths(body))
        kind = rng.choices(
            ["set", "set-top", "option", "drop", "add", "nest", "duplicate", "raw"],
            weights=[30, 20, 15, 8, 6, 5, 6, 6],
        )[0]
        if kind == "set" and paths:
            path = rng.choice(paths)
            _set(body, path, self.hostile())
            done.append(f"set {'.'.join(map(str, path))}")
        elif kind in ("set", "set-top"):
            key = rng.choice([*body, "model", "stream", "format", "options", "keep_alive"])
            body[key] = self.hostile()
            done.append(f"set {key}")
        elif kind == "option":
            options = body.get("options")
            if not isinstance(options, dict):
                options = body["options"] = {}
            key = rng.choice(OPTION_KEYS)
            options[key] = self.hostile()
            done.append(f"option {key}")
        elif kind == "drop" and paths:
            path = rng.choice(paths)
            _drop(body, path)
            done.append(f"drop {'.'.join(map(str, path))}")
        elif kind == "add":
            key = rng.choice(["extra", "n", "tool_choice", "user", "name", "from", "_debug"])
            body[key] = self.hostile()
            done.append(f"add {key}")
        elif kind == "nest":
            key = rng.choice(["format", "tools", "options", "messages", "input", "extra"])
            body[key] = NEST
            done.append(f"nest {key}")
        elif kind == "duplicate" and body:
            key = rng.choice(list(body))
            raw = orjson.dumps(body)
            extra = orjson.dumps({key: self.hostile()})[1:-1]
            done.append(f"duplicate {key}")
            return raw[:-1] + (b"," if len(raw) > 2 else b"") + extra + b"}"
        else:
            raw = orjson.dumps(body)
            choice = rng.randrange(3)
            if choice == 0:
                done.append("cut")
                return raw[: rng.randrange(len(raw))]
            if choice == 1:
                done.append("garbage")
                return raw + rng.choice([b"x", b"}", b",", b"\x00", b"\xff"])
            done.append("not an object")
            return rng.choice(RAW_BODIES)
        return None

    def encode(self, body: dict[str, Any]) -> bytes:
        raw = orjson.dumps(body)
        nest = orjson.dumps(NEST)
        while nest in raw:
            levels = self.rng.choice([60, 70, 300, 2000])
            raw = raw.replace(nest, _nested_json(levels), 1)
        return raw


def _fill(path: str, rng: random.Random) -> str:
    for param, values in {
        "{model}": [SERVED, "nope", "a/b/c/d", "%2e%2e", "x" * 300],
        "{digest}": ["sha256:" + "0" * 64, "sha256-" + "f" * 64, "sha256:../x", "nope"],
        "{entry_id}": ["0-0", "1-1", "nope", "9" * 40, "-"],
    }.items():
        if param in path:
            path = path.replace(param, rng.choice(values))
    return path


#: Routes left out: a pull or a push answers 500 with its registry's error (Ollama's contract)
#: and would reach for a real registry (a push of a store model to registry.ollama.ai);
#: tests/api/test_pull.py and test_push.py test them against a registry fixture.
UNFUZZED = {("POST", "/api/pull"), ("POST", "/api/push")}


def probes(seed: int, routes: list[tuple[str, str]] | None = None) -> Iterator[Probe]:
    """Endless probes, the same ones for the same ``seed``; ``routes``: Herd's own
    (from its /openapi.json), fuzzed with any body, besides the seeded ones."""
    rng = random.Random(seed)
    mutator = _Mutator(rng)
    seeded = list(SEEDS)
    bare = sorted({*BARE, *(routes or [])} - set(seeded) - UNFUZZED)
    index = 0
    while True:
        index += 1
        if rng.random() < 0.12:
            method, template = rng.choice(bare)
            path = _fill(template, rng)
            content = None if method in ("GET", "HEAD") else rng.choice(RAW_BODIES)
            yield Probe(method, path, content, ("bare",), seed, index)
            continue
        method, path = rng.choice(seeded)
        body = copy.deepcopy(rng.choice(SEEDS[(method, path)]))
        done: list[str] = []
        raw: bytes | None = None
        for _ in range(rng.choice([1, 1, 2, 3])):
            raw = mutator.mutate(body, done)
            if raw is not None:
                break
        content = raw if raw is not None else mutator.encode(body)
        yield Probe(method, path, content, tuple(done), seed, index)


# -- answers --------------------------------------------------------------------------------


def _terminal_ndjson(text: str) -> str | None:
    """Why an NDJSON stream breaks the rule (None: it keeps it)."""
    if not text.endswith("\n"):
        return "the stream does not end with a newline"
    objects = []
    for line in text.split("\n")[:-1]:
        try:
            objects.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            return f"a line is not JSON: {line[:200]!r}"
    if not objects:
        return "an empty stream"
    errors = [i for i, obj in enumerate(objects) if isinstance(obj, dict) and "error" in obj]
    if errors and errors != [len(objects) - 1]:
        return "an error line that is not the one last line"
    last = objects[-1]
    if not isinstance(last, dict):
        return "the last line is not an object"
    if "error" not in last and last.get("done") is not True and last.get("status") != "success":
        return "the stream ends without done, success or an error"
    return None


def _terminal_sse(text: str) -> str | None:
    events = text.split("\n\n")
    if events[-1] != "":
        return "the stream does not end with a blank line"
    datas = [e.removeprefix("data: ") for e in events[:-1] if e.startswith("data: ")]
    if not datas:
        return "an empty stream"
    errors = [i for i, d in enumerate(datas) if d.startswith('{"error"')]
    if errors and errors != [len(datas) - 1]:
        return "an error event that is not the one last event"
    if not errors and datas[-1] != "[DONE]":
        return "the stream ends without [DONE] or an error event"
    return None


def check(status: int, content_type: str, text: str) -> str | None:
    """Why an answer breaks what clients rely on (None: it does not)."""
    if status >= 500:
        return f"status {status}: {text[:300]}"
    if status != 200:
        return None
    if content_type.startswith("application/x-ndjson"):
        return _terminal_ndjson(text)
    if content_type.startswith("text/event-stream"):
        return _terminal_sse(text)
    return None


@dataclass
class Report:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return (
            f"{self.sent} requests in {self.seconds:.1f} s ({shown}); "
            f"{len(self.failures)} failures, {len(self.hangs)} hangs"
        )


async def _send(client: httpx.AsyncClient, probe: Probe, timeout_s: float, report: Report) -> None:
    headers = {"Content-Type": "application/json"} if probe.body is not None else {}
    try:
        async with asyncio.timeout(timeout_s):
            request = client.build_request(
                probe.method, probe.path, content=probe.body, headers=headers
            )
            response = await client.send(request, stream=True)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
    except TimeoutError:
        report.hangs.append(f"no answer in {timeout_s} s: {probe}")
        return
    except httpx.HTTPError as exc:  # a connection cut mid-answer: a crash, or a broken stream
        report.failures.append(f"{type(exc).__name__} {exc}: {probe}")
        return
    report.sent += 1
    report.statuses[response.status_code] += 1
    why = check(
        response.status_code,
        response.headers.get("content-type", ""),
        body.decode("utf-8", errors="replace"),
    )
    if why is not None:
        report.failures.append(f"{why}: {probe}")


async def run(
    client: httpx.AsyncClient,
    *,
    seed: int,
    count: int,
    budget_s: float,
    timeout_s: float = 20.0,
    concurrency: int = 4,
    routes: list[tuple[str, str]] | None = None,
) -> Report:
    """Send up to ``count`` probes (``concurrency`` at a time) within ``budget_s``."""
    report = Report()
    started = time.monotonic()
    source = probes(seed, routes)

    async def lane() -> None:
        while time.monotonic() - started < budget_s:
            try:
                probe = next(source)
            except StopIteration:  # pragma: no cover - endless
                return
            if probe.index > count:
                return
            await _send(client, probe, timeout_s, report)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    report.seconds = time.monotonic() - started
    return report


def openapi_routes(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path) of every operation in an OpenAPI document."""
    return [
        (method.upper(), path)
        for path, operations in schema.get("paths", {}).items()
        for method in operations
        if method.upper() in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    ]
